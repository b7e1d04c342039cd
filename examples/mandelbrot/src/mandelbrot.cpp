// Mandelbrot grid application (thesis section 6.1.1), rewritten for vmwu.
//
// Usage:
//   mandelbrot OUTFILE XMIN XMAX YMIN YMAX WIDTH HEIGHT ITERATIONS X0 Y0 X1 Y1
//
// The full image is WIDTH x HEIGHT pixels covering real part [XMIN, XMAX) and
// imaginary part (YMIN, YMAX]. This run computes only the region of columns
// X0..X1-1 and rows Y0..Y1-1 (half-open, so "0 0 WIDTH HEIGHT" is the whole
// image and "0 0 1600 100", "0 100 1600 200", ... tile it in bands of rows).
// Row 0 is the top of the image (imaginary part YMAX).
//
// Output format (read by combine.py):
//   line 1, ASCII:  "MANDEL 1 W H ITERS X0 Y0 X1 Y1 XMIN XMAX YMIN YMAX\n"
//   then (X1-X0)*(Y1-Y0) unsigned 16-bit little-endian iteration counts, row
//   by row, left to right. A count equal to ITERS means "did not escape"
//   (the point is taken to be in the set).
//
// Exit codes: 0 success, 1 I/O error, 2 bad arguments.
//
// Progress: if `vmwu-progress` is on PATH (inside a vmwu guest) it is run
// with the fraction done about every 10 % of rows; on a plain host it is
// simply not found and nothing happens.
//
// Build: g++ -static -O2 -s -o app/mandelbrot src/mandelbrot.cpp
// (no -march=native: the guest may run under TCG with a baseline x86-64 CPU).

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace {

const char *const kUsage =
    "usage: mandelbrot OUTFILE XMIN XMAX YMIN YMAX WIDTH HEIGHT ITERATIONS X0 Y0 X1 Y1\n"
    "  computes columns X0..X1-1, rows Y0..Y1-1 of the WIDTH x HEIGHT image\n"
    "  example: mandelbrot out.bin -2.0 1.0 -1.0 1.0 1600 800 100 0 0 1600 800\n";

[[noreturn]] void bad_args(const std::string &msg) {
    std::fprintf(stderr, "mandelbrot: %s\n%s", msg.c_str(), kUsage);
    std::exit(2);
}

double parse_double(const char *name, const char *s) {
    char *end = nullptr;
    errno = 0;
    double v = std::strtod(s, &end);
    if (end == s || *end != '\0' || errno != 0 || !std::isfinite(v))
        bad_args(std::string(name) + " must be a number, got '" + s + "'");
    return v;
}

long parse_long(const char *name, const char *s, long lo, long hi) {
    char *end = nullptr;
    errno = 0;
    long v = std::strtol(s, &end, 10);
    if (end == s || *end != '\0' || errno != 0)
        bad_args(std::string(name) + " must be an integer, got '" + s + "'");
    if (v < lo || v > hi)
        bad_args(std::string(name) + " must be in " + std::to_string(lo) + ".." +
                 std::to_string(hi) + ", got " + s);
    return v;
}

// Full path of `vmwu-progress` if it is an executable on PATH, else "".
// Looked up once, so the per-report cost is one fork/exec (about 10 per run).
std::string find_progress_helper() {
    const char *path = std::getenv("PATH");
    if (path == nullptr) return "";
    std::string p(path);
    size_t start = 0;
    while (start <= p.size()) {
        size_t colon = p.find(':', start);
        if (colon == std::string::npos) colon = p.size();
        std::string dir = p.substr(start, colon - start);
        if (dir.empty()) dir = ".";
        std::string cand = dir + "/vmwu-progress";
        if (access(cand.c_str(), X_OK) == 0) return cand;
        start = colon + 1;
    }
    return "";
}

// Best effort: any failure of the helper is ignored, it must never stop the job.
void report_progress(const std::string &helper, double fraction) {
    if (helper.empty()) return;
    char arg[32];
    std::snprintf(arg, sizeof arg, "%.3f", fraction);
    std::fflush(nullptr);  // don't let the child inherit and re-flush our buffers
    pid_t pid = fork();
    if (pid == 0) {
        execl(helper.c_str(), "vmwu-progress", arg, static_cast<char *>(nullptr));
        _exit(127);
    }
    if (pid > 0) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
    }
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 13) bad_args("expected 12 arguments, got " + std::to_string(argc - 1));

    const char *outfile = argv[1];
    const double xmin = parse_double("XMIN", argv[2]);
    const double xmax = parse_double("XMAX", argv[3]);
    const double ymin = parse_double("YMIN", argv[4]);
    const double ymax = parse_double("YMAX", argv[5]);
    const long width = parse_long("WIDTH", argv[6], 1, 1000000);
    const long height = parse_long("HEIGHT", argv[7], 1, 1000000);
    const long iters = parse_long("ITERATIONS", argv[8], 1, 65535);  // fits uint16
    const long x0 = parse_long("X0", argv[9], 0, width - 1);
    const long y0 = parse_long("Y0", argv[10], 0, height - 1);
    const long x1 = parse_long("X1", argv[11], x0 + 1, width);
    const long y1 = parse_long("Y1", argv[12], y0 + 1, height);
    if (!(xmin < xmax)) bad_args("XMIN must be less than XMAX");
    if (!(ymin < ymax)) bad_args("YMIN must be less than YMAX");

    const std::string helper = find_progress_helper();
    const long cols = x1 - x0;
    const long rows = y1 - y0;
    const double dx = (xmax - xmin) / static_cast<double>(width);
    const double dy = (ymax - ymin) / static_cast<double>(height);

    std::vector<unsigned char> data(static_cast<size_t>(cols) * rows * 2);
    size_t k = 0;
    long next_report = 1;  // next tenth to report
    for (long r = y0; r < y1; ++r) {
        const double ci = ymax - static_cast<double>(r) * dy;
        for (long c = x0; c < x1; ++c) {
            const double cr = xmin + static_cast<double>(c) * dx;
            double zr = 0.0, zi = 0.0;
            long n = 0;
            // Escape-time iteration z <- z^2 + c until |z| > 2 or the limit.
            while (n < iters) {
                const double zr2 = zr * zr, zi2 = zi * zi;
                if (zr2 + zi2 > 4.0) break;
                zi = 2.0 * zr * zi + ci;
                zr = zr2 - zi2 + cr;
                ++n;
            }
            data[k++] = static_cast<unsigned char>(n & 0xff);
            data[k++] = static_cast<unsigned char>(n >> 8);
        }
        const long done = r - y0 + 1;
        if (done * 10 >= next_report * rows && done < rows) {
            report_progress(helper, static_cast<double>(done) / rows);
            next_report = done * 10 / rows + 1;
        }
    }

    FILE *f = std::fopen(outfile, "wb");
    if (f == nullptr) {
        std::fprintf(stderr, "mandelbrot: cannot open %s: %s\n", outfile, std::strerror(errno));
        return 1;
    }
    // %.17g round-trips doubles exactly, so combine.py can compare headers.
    std::fprintf(f, "MANDEL 1 %ld %ld %ld %ld %ld %ld %ld %.17g %.17g %.17g %.17g\n", width,
                 height, iters, x0, y0, x1, y1, xmin, xmax, ymin, ymax);
    const bool ok = std::fwrite(data.data(), 1, data.size(), f) == data.size();
    if (std::fclose(f) != 0 || !ok) {
        std::fprintf(stderr, "mandelbrot: error writing %s: %s\n", outfile, std::strerror(errno));
        return 1;
    }
    report_progress(helper, 1.0);
    std::printf("mandelbrot: wrote %ld x %ld pixels (rows %ld..%ld) to %s\n", cols, rows, y0,
                y1 - 1, outfile);
    return 0;
}

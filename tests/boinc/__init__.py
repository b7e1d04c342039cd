"""A BOINC project server of our own and a real BOINC client, for tests (docs/boinc.md)."""

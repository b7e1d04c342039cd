"""The one door for XML from outside: OVF descriptors of units from elsewhere, a BOINC slot's
``init_data.xml``, job.xml files.

Both are parsed by defusedxml's expat parsers with every document type declaration
refused (``forbid_dtd``): the DOCTYPE is refused when expat reaches it, before any entity
is declared, expanded or fetched, so neither an entity bomb nor an external entity can do
anything. Callers turn the two exceptions below into their own one-line errors.

- :func:`parse_element` gives an ElementTree element (namespaces resolved), for the OVF
  descriptor (read as UTF-8 whatever its XML declaration names) and ``init_data.xml``;
- :func:`parse_nodes` gives a small tree of :class:`Node` with the line of every element
  and text, without namespace processing, for job.xml, whose errors name ``FILE:LINE``.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.parsers import expat

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser


class XmlRefused(Exception):
    """The document has a document type declaration (or an entity): refused unread.
    ``detail`` is defusedxml's account of it."""

    def __init__(self, line: int, detail: str) -> None:
        super().__init__(f"line {line}: {detail}")
        self.line = line
        self.detail = detail


class XmlMalformed(Exception):
    """The document is not well-formed XML; ``reason`` is expat's message."""

    def __init__(self, reason: str, line: int, column: int) -> None:
        super().__init__(f"{reason}: line {line}, column {column}")
        self.reason = reason
        self.line = line
        self.column = column


def parse_element(data: bytes, *, encoding: str | None = None) -> ET.Element:
    """The root element of ``data``; with ``encoding``, decoded as that whatever the XML
    declaration says (an unknown name there made expat raise LookupError, found by the
    fuzzer: without ``encoding`` that is a malformed document too)."""
    parser = DefusedXMLParser(encoding=encoding, forbid_dtd=True)
    try:
        parser.feed(data)
        root: ET.Element = parser.close()
    except DefusedXmlException as err:
        raise XmlRefused(parser.parser.CurrentLineNumber, str(err)) from None
    except ET.ParseError as err:
        line, column = err.position
        raise XmlMalformed(expat.ErrorString(err.code), line, column) from None
    except (LookupError, ValueError) as err:  # an encoding Python does not know
        where = parser.parser
        raise XmlMalformed(str(err), where.CurrentLineNumber, where.CurrentColumnNumber) from None
    return root


@dataclass
class Node:
    """An element with the line it starts on; ``text`` are its character data pieces and
    ``text_line`` the line of its first non-blank one (0: none)."""

    tag: str
    line: int
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    text_line: int = 0


def parse_nodes(data: bytes) -> Node:
    """The root of ``data`` as a :class:`Node` tree (encoding from the XML declaration)."""
    # xml.sax is imported here, not with the module: it pulls in urllib.request,
    # http.client, ssl and email (~20 ms), which job.xml needs but `vmwu run` does not.
    from xml.sax import InputSource, SAXParseException
    from xml.sax.handler import ContentHandler
    from xml.sax.xmlreader import AttributesImpl, Locator

    from defusedxml.expatreader import DefusedExpatParser

    class TreeBuilder(ContentHandler):
        def __init__(self) -> None:
            super().__init__()
            self.stack: list[Node] = []
            self.root: Node | None = None
            self.locator: Locator | None = None

        def setDocumentLocator(self, locator: Locator) -> None:  # noqa: N802 (SAX's name)
            self.locator = locator

        def line(self) -> int:
            return (self.locator.getLineNumber() or 0) if self.locator is not None else 0

        def startElement(self, name: str, attrs: AttributesImpl) -> None:  # noqa: N802
            node = Node(name, self.line(), dict(attrs.items()))
            if self.stack:
                self.stack[-1].children.append(node)
            elif self.root is None:
                self.root = node
            self.stack.append(node)

        def endElement(self, name: str) -> None:  # noqa: N802
            self.stack.pop()

        def characters(self, content: str) -> None:
            if self.stack:
                node = self.stack[-1]
                if content.strip() and not node.text_line:
                    node.text_line = self.line()
                node.text.append(content)

    builder = TreeBuilder()
    parser = DefusedExpatParser(forbid_dtd=True)
    parser.setContentHandler(builder)
    source = InputSource()
    source.setByteStream(io.BytesIO(data))
    try:
        parser.parse(source)
    except DefusedXmlException as err:
        raise XmlRefused(builder.line(), str(err)) from None
    except SAXParseException as err:
        raise XmlMalformed(
            err.getMessage(), err.getLineNumber() or 0, err.getColumnNumber() or 0
        ) from None
    assert builder.root is not None  # expat: "no element found" otherwise
    return builder.root

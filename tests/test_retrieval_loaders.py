"""Loaders on small real files of each format, written here (a real PDF by fpdf2, a real DOCX)."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.loaders import LoadError, format_of, load


def blocks_of(path: Path):
    return load(path, path.read_bytes())


def make_pdf(path: Path, pages: list[str]) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    pdf.output(str(path))
    return path


def make_docx(path: Path) -> Path:
    import docx

    document = docx.Document()
    document.add_paragraph("Nightjar handbook", style="Title")
    document.add_paragraph("A short handbook for the assistant.")
    document.add_heading("Install", level=1)
    document.add_heading("Linux", level=2)
    document.add_paragraph("Run the installer script as root.")
    document.add_heading("Support", level=1)
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Channel", "Hours"
    table.cell(1, 0).text, table.cell(1, 1).text = "Phone", "9 to 5"
    document.save(str(path))
    return path


def test_plain_text_paragraphs_keep_their_lines(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_text("First line\nsecond line\n\n\nThird paragraph here.\n")
    blocks = blocks_of(path)
    assert [b.text for b in blocks] == ["First line\nsecond line", "Third paragraph here."]
    assert [b.lines for b in blocks] == [(1, 2), (5, 5)]


def test_markdown_headings_paths_and_lines(tmp_path: Path):
    path = tmp_path / "guide.md"
    path.write_text(
        "# Guide\n\nIntro text.\n\n## Install\n\n### Linux\n\nUse apt.\nThen reboot.\n\n"
        "```bash\n# not a heading\nmake\n```\n\n## Usage\n\n- one\n- two\n"
    )
    blocks = blocks_of(path)
    by_text = {b.text: b for b in blocks}
    assert by_text["Intro text."].heading == ("Guide",)
    assert by_text["Use apt.\nThen reboot."].heading == ("Guide", "Install", "Linux")
    assert by_text["Use apt.\nThen reboot."].lines == (9, 10)
    code = next(b for b in blocks if "make" in b.text)
    assert code.heading == ("Guide", "Install", "Linux") and "# not a heading" in code.text
    assert any(b.heading == ("Guide", "Usage") and "one" in b.text for b in blocks)


def test_restructuredtext_sections(tmp_path: Path):
    path = tmp_path / "garden.rst"
    path.write_text(
        "=========\nGardening\n=========\n\nTop text.\n\nTomatoes\n--------\n\nFull sun.\nWater often.\n\n"
        "Compost\n-------\n\nTurn it monthly.\n"
    )
    blocks = blocks_of(path)
    assert [(b.heading, b.text, b.lines) for b in blocks] == [
        (("Gardening",), "Top text.", (5, 5)),
        (("Gardening", "Tomatoes"), "Full sun.\nWater often.", (10, 11)),
        (("Gardening", "Compost"), "Turn it monthly.", (16, 16)),
    ]


def test_html_main_text_not_markup(tmp_path: Path):
    path = tmp_path / "page.html"
    path.write_text(
        "<html><head><title>x</title><style>p{color:red}</style></head><body><nav>Home | About</nav>"
        "<main><h1>Recipes</h1><h2>Bread</h2><p>Mix <b>flour</b> and water.</p><ul><li>Bake at 230.</li></ul>"
        "<script>var secret = 1;</script></main><footer>(c) me</footer></body></html>"
    )
    blocks = blocks_of(path)
    text = " ".join(b.text for b in blocks)
    assert "Mix flour and water." in text and "Bake at 230." in text
    for markup in ("color:red", "secret", "Home | About", "(c) me", "<b>"):
        assert markup not in text
    assert all(b.heading == ("Recipes", "Bread") for b in blocks)


def test_pdf_text_with_page_numbers(tmp_path: Path):
    path = make_pdf(
        tmp_path / "report.pdf",
        ["The first page talks about owls.", "Page two: the budget for 2025 is 4200 euros."],
    )
    blocks = blocks_of(path)
    assert {b.page for b in blocks} == {1, 2}
    page2 = " ".join(b.text for b in blocks if b.page == 2)
    assert "4200 euros" in page2 and "owls" not in page2


def test_docx_headings_paragraphs_and_tables(tmp_path: Path):
    blocks = blocks_of(make_docx(tmp_path / "handbook.docx"))
    by_text = {b.text: b for b in blocks}
    assert by_text["Run the installer script as root."].heading == ("Nightjar handbook", "Install", "Linux")
    table = next(b for b in blocks if "Phone" in b.text)
    assert "9 to 5" in table.text and table.heading == ("Nightjar handbook", "Support")
    assert by_text["A short handbook for the assistant."].paragraphs == (2, 2)


def test_source_code_is_text_with_lines(tmp_path: Path):
    path = tmp_path / "tool.py"
    path.write_text("import os\n\n\ndef main():\n    return os.getcwd()\n")
    blocks = blocks_of(path)
    assert blocks[1].text == "def main():\n    return os.getcwd()" and blocks[1].lines == (4, 5)
    assert format_of(Path("Makefile")) == "text" and format_of(Path("photo.png")) is None


def test_utf8_bom_and_utf16_are_read(tmp_path: Path):
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffcafé au lait".encode())
    utf16 = tmp_path / "wide.txt"
    utf16.write_bytes("thé vert".encode("utf-16"))
    assert blocks_of(bom)[0].text == "café au lait"
    assert blocks_of(utf16)[0].text == "thé vert"


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage", "corrupt PDF"),
        ("cut.pdf", None, "corrupt PDF"),
        ("image.txt", bytes(range(256)) * 4, "binary data"),
        ("empty.md", b"", "empty file"),
        ("blank.txt", b"  \n\n \t\n", "empty file"),
        ("latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"), "not UTF-8"),
        ("broken.docx", b"PK\x03\x04 not really a zip", "corrupt DOCX"),
        ("scan.pdf", "blank", "no extractable text"),
    ],
)
def test_bad_files_are_refused_with_a_reason(tmp_path: Path, name: str, data, reason: str):
    path = tmp_path / name
    if name == "cut.pdf":
        whole = make_pdf(tmp_path / "whole.pdf", ["some text " * 50]).read_bytes()
        path.write_bytes(whole[: len(whole) // 3])
    elif data == "blank":
        make_pdf(path, [""])
    else:
        path.write_bytes(data)
    with pytest.raises(LoadError, match=reason):
        blocks_of(path)

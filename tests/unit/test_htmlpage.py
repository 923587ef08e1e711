"""The report page's pieces: every value escaped, numbers formatted one way, the mixed-runs warning only when mixed."""

from interp_tl.htmlpage import cell, page, study_section, table_html


def test_cells_and_tables_escape_and_format():
    assert [cell(None), cell(0.123456), cell(12345.678), cell(3), cell("L1H3")] == ["n/a", "0.1235", "1.235e+04", "3",
                                                                                  "L1H3"]
    html = table_html(["a<b", "x"], [["<script>", 1.0]])
    assert "<script>" not in html and "&lt;script&gt;" in html and "<th>a&lt;b</th>" in html


def test_a_section_and_the_page():
    entry = {"study": "alignment", "headline": "z & more", "files": ["alignment.json", "alignment.png"],
             "docs": "docs/studies/alignment.md"}
    section = study_section(entry, {"model": {"name": "m<1>"}}, (["layer"], [[0]]))
    assert '<img src="alignment.png"' in section and 'href="alignment.json"' in section
    assert "z &amp; more" in section and "m&lt;1&gt;" in section and "<td>0</td>" in section
    one = page([section], [("alignment", "alignment")], mixed=False).decode("utf-8")
    assert one.startswith("<!DOCTYPE html>") and "more than one run" not in one and "<script" not in one
    assert "more than one run" in page([section], [("alignment", "alignment")], mixed=True).decode("utf-8")
    assert "No result files" in page([], [], mixed=False).decode("utf-8")

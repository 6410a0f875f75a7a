"""``results/index.html``: a static page rendered from the published CSVs and figures.

No server and no external assets: the tables are written into the page from ``leaderboard.csv``,
``table4.csv`` and ``table1.csv``; a few lines of inline JavaScript make every table sortable (click
a header; numbers sort as numbers) and sort the leaderboard by scenario on load. After the window's
load event the script marks ``<body data-ready="1">`` and counts the figures that decoded
(``data-images-loaded``), which is what ``tests/test_html.py`` reads through headless Chromium.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path

FIGURE_ORDER = ("table4_heatmap", "privacy_utility_frontier", "roc")

SCRIPT = """
function cellValue(row, index) {
  const text = row.cells[index].textContent.trim();
  const number = parseFloat(text);
  return (text !== '' && !isNaN(number) && /^-?[0-9.eE+-]+$/.test(text)) ? number : text.toLowerCase();
}
function sortTable(table, index, ascending) {
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = cellValue(a, index), y = cellValue(b, index);
    if (typeof x === typeof y) return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
    return (typeof x === 'number' ? -1 : 1);
  });
  rows.forEach(row => body.appendChild(row));
  table.dataset.sortedBy = table.tHead.rows[0].cells[index].textContent;
  table.dataset.ascending = ascending ? '1' : '0';
}
document.querySelectorAll('table.sortable').forEach(table => {
  Array.from(table.tHead.rows[0].cells).forEach((header, index) => {
    header.addEventListener('click', () => sortTable(table, index, table.dataset.sortedBy !== header.textContent || table.dataset.ascending !== '1'));
  });
});
const board = document.getElementById('leaderboard');
if (board && board.tBodies[0].rows.length) sortTable(board, 0, true);
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  document.body.dataset.imagesLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.ready = '1';
});
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 12px; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; white-space: nowrap; }
th { background: #eee; cursor: pointer; position: sticky; top: 0; }
.scroll { overflow: auto; max-height: 40em; }
figure { display: inline-block; margin: 1em; } img { max-width: 640px; }
#table4-matrix td { font-size: 14px; } .v.disagree { color: #b2182b; font-weight: bold; } .paper { color: #555; }
"""


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.exists():
        return [], []
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return (rows[0], rows[1:]) if rows else ([], [])


def table_html(table_id: str, header: list[str], rows: list[list[str]], columns: list[str] | None = None) -> str:
    if not header:
        return f'<p id="{table_id}-missing">(not produced)</p>'
    keep = [header.index(c) for c in (columns or header) if c in header]
    head = "".join(f"<th>{html.escape(header[i])}</th>" for i in keep)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(row[i])}</td>" for i in keep) + "</tr>"
                     for row in rows if len(row) == len(header))
    return (f'<div class="scroll"><table id="{table_id}" class="sortable"><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{body}\n</tbody></table></div>")


LEADERBOARD_VIEW = ["scenario", "seed", "tier", "method", "defenses", "attacks", "status", "utility", "utility_metric",
                    "mia_attack", "mia.auc", "mia.tpr@0.01", "inversion_attack", "inversion.recovered", "inversion.rouge1", "inversion.exact",
                    "poison_attack", "poison.asr", "dp.epsilon", "cost.wall_s", "cost.bytes_up", "cost.expansion"]


def figures_html(out: Path) -> str:
    folder = out / "figures"
    pngs = sorted(folder.glob("*.png")) if folder.exists() else []
    pngs.sort(key=lambda p: next((i for i, stem in enumerate(FIGURE_ORDER) if p.stem.startswith(stem)), len(FIGURE_ORDER)))
    items = [f'<figure><img src="figures/{html.escape(p.name)}" alt="{html.escape(p.stem)}">'
             f'<figcaption>{html.escape(p.stem)} (<a href="figures/{html.escape(p.stem)}.svg">svg</a>)</figcaption></figure>'
             for p in pngs]
    return "\n".join(items) or "<p>(no figures)</p>"


MISSING_HEADS = ("Missing from this grid", "No Table 4 cell can be built")


def missing_lines(text: str) -> list[str]:
    """The bullet lines of ``table4.md``'s missing-runs block (other bullets, e.g. the rule's, are not)."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith(MISSING_HEADS):
            inside = True
        elif inside and line.startswith("- "):
            lines.append(line[2:])
        elif inside and lines and not line.strip():
            break
    return lines


def missing_html(out: Path) -> str:
    """What ``table4.md`` says the grid lacks (its bullet lines), as a list; empty when nothing is missing."""
    path = out / "table4.md"
    lines = missing_lines(path.read_text(encoding="utf-8")) if path.exists() else []
    if not lines:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f'<p>Missing from this grid:</p><ul id="table4-missing">{items}</ul>'


def curves_html(out: Path) -> str:
    """``table4.md``'s section on cells backed by a published curve (``bench.reporting.resists``): its count
    and one item per declared curve; empty when the file has no such section."""
    from bench.reporting.resists import SECTION

    path = out / "table4.md"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    head = f"## {SECTION}\n"
    if head not in text:
        return ""
    lines = [line for line in text.split(head, 1)[1].split("\n## ", 1)[0].splitlines() if line.strip()]
    intro = " ".join(line for line in lines if not line.startswith("- "))
    items = "".join(f"<li>{html.escape(line[2:])}</li>" for line in lines if line.startswith("- "))
    return f'<p>{html.escape(intro)}</p><ul id="table4-curves">{items}</ul>'


def learned_html(out: Path) -> str:
    """``table4.md``'s utility-without-a-defense section (``bench.reporting.learned``), from leaderboard.csv."""
    from bench.reporting import leaderboard, learned

    path = out / "leaderboard.csv"
    entries = learned.build(leaderboard.read_csv(path)) if path.exists() else []
    if not entries:
        return ""
    head = ["regime", "tier", "method", "utility", "seeds", "base", "trained", "lowest", "highest", "change",
            "95% CI", "learned", "per round"]
    rows = [[e.regime, e.tier, e.row, e.metric.removeprefix("utility."), str(e.seeds), f"{e.base:.2f}",
             f"{e.trained:.2f}{' †' if e.twin else ''}", f"{e.low:.2f}", f"{e.high:.2f}", f"{e.change:+.2f}",
             f"{e.change_low:+.2f} to {e.change_high:+.2f}", e.learned, " ".join(f"{v:.2f}" for v in e.curve)]
            for e in entries]
    return (f"<h3>{html.escape(learned.SECTION)}</h3>\n<p>{html.escape(' '.join(learned.LEGEND.split()))}</p>\n"
            f"{table_html('table4-learned', head, rows)}")


def matrix_section(header: list[str], rows: list[list[str]]) -> str:
    """Table 4 as the paper prints it, then each column's minimum detectable effect (from table4.csv)."""
    from bench.reporting import matrix4

    cells = [dict(zip(header, row)) for row in rows if len(row) == len(header)]
    if not cells or not {"role", "defense", "verdict"} <= set(header):
        return ""
    columns = matrix4.column_mde(cells)
    mde_rows = "".join(
        f"<tr><td>{html.escape(c.role)}</td><td>{html.escape(c.defense)}</td><td>{c.cells}</td><td>{c.seeds}</td>"
        f"<td>{'' if c.sd is None else f'{c.sd:.3f}'}</td><td>{'' if c.mde is None else f'{c.mde:.3f}'}</td>"
        f"<td>{c.goal:g}</td><td>{'' if c.met is None else ('yes' if c.met else 'no')}</td></tr>" for c in columns)
    return (f"{matrix4.matrix_html(cells)}\n<h3>Minimum detectable effect per column</h3>\n"
            f'<p>{html.escape(matrix4.MDE_CAPTION)}</p><table id="table4-mde" class="sortable"><thead><tr><th>role</th>'
            "<th>defense</th><th>cells</th><th>seeds</th><th>paired sd</th><th>MDE</th><th>goal</th><th>meets goal</th>"
            f"</tr></thead><tbody>{mde_rows}</tbody></table>")


def render(out: Path) -> str:
    board = read_csv(out / "leaderboard.csv")
    t4 = read_csv(out / "table4.csv")
    t1 = read_csv(out / "table1.csv")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>TierBench results</title><style>{STYLE}</style></head>
<body>
<h1>TierBench results</h1>
<p>Rendered from <a href="leaderboard.csv">leaderboard.csv</a>, <a href="table4.csv">table4.csv</a>
(<a href="table4.md">markdown</a>) and <a href="table1.csv">table1.csv</a>. Click a column header to sort.</p>
<h2>Table 4 (method × defense × attack)</h2>
{matrix_section(*t4)}
{learned_html(out)}
{curves_html(out)}
{missing_html(out)}
<h2>Figures</h2>
{figures_html(out)}
<h2>Table 4 in detail</h2>
{table_html("table4", *t4)}
<h2>Leaderboard ({len(board[1])} runs)</h2>
{table_html("leaderboard", *board, columns=LEADERBOARD_VIEW)}
<h2>Table 1 (tier × method)</h2>
{table_html("table1", *t1)}
<script>{SCRIPT}</script>
</body></html>
"""


def write_index(out: str | Path) -> Path:
    from bench.api.files import atomic_write as _atomic_write

    out = Path(out)
    path = out / "index.html"
    _atomic_write(path, render(out))
    return path

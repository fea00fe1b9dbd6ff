"""Every concept picture of `ftcourse.diagrams` is on the built site, with alt text, and its image loads.

A notebook shows a picture as its `Diagram._repr_html_`: `<figure class="ftcourse-diagram"
data-diagram=NAME><img src="data:image/png..." alt=...></figure>` (myst-nb renders text/html before
image/png). Run after the book build, like test_site.py; the planted test needs only Chromium.
"""

import base64
from pathlib import Path

from playwright.sync_api import Browser, Page
from sitecheck import diagram_problems, serve

from ftcourse.diagrams import DIAGRAMS

# A 1x1 PNG: the image that loads. The broken one is not a PNG at all.
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def figure(name: str, alt: str, data: str = PIXEL) -> str:
    return (f'<figure class="ftcourse-diagram" data-diagram="{name}">'
            f'<img src="data:image/png;base64,{data}" alt="{alt}"></figure>')


def test_every_concept_picture_is_on_the_site(tab: Page, base_url: str, site: Path,
                                              docnames: list[str]) -> None:
    problems = diagram_problems(tab, base_url, site, [f"{name}.html" for name in docnames], DIAGRAMS)
    assert not problems, "\n".join(problems)


def test_diagram_problems_reports_each_planted_problem(browser: Browser, tmp_path: Path) -> None:
    broken = base64.b64encode(b"not a png").decode()
    (tmp_path / "chapter.html").write_text(
        "<html><body><h1>Chapter</h1>" + figure("lora_layer", "A LoRA layer") + figure("lora_layer", "")
        + figure("qlora_memory_layout", "   ") + figure("decision_ladder", "The ladder", broken)
        + figure("old_picture", "Renamed since") + "</body></html>")
    (tmp_path / "plain.html").write_text("<html><body><h1>No pictures</h1></body></html>")
    names = ("lora_layer", "qlora_memory_layout", "decision_ladder", "training_step_memory")
    with serve(tmp_path) as base_url:
        context = browser.new_context()
        problems = diagram_problems(context.new_page(), base_url, tmp_path,
                                    ["chapter.html", "plain.html", "ghost.html"], names)
        context.close()
    def missing(name: str) -> str:
        return (f"diagram {name!r} is shown whole (alt text, image loaded) on no page: display "
                f"ftcourse.diagrams.{name}() where the idea is introduced")

    assert problems == [
        "chapter.html: diagram 'lora_layer' has no alt text",
        "chapter.html: diagram 'qlora_memory_layout' has no alt text",
        "chapter.html: diagram 'decision_ladder': its image did not load",
        "chapter.html: diagram 'old_picture' is not one of ftcourse.diagrams.DIAGRAMS",
        missing("qlora_memory_layout"), missing("decision_ladder"), missing("training_step_memory"),
    ]

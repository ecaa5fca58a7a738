"""The Report tab's content: a run's report.md, cut at its images so that each image file can be shown.

A Markdown image pointing at a file in the run directory cannot load in the page (the demo serves no files
from run directories), so the image becomes its own part, shown by a ``gr.Image``.
"""

from __future__ import annotations

import re
from pathlib import Path

from minnow.core.rundir import RunDir
from minnow.report.markdown import markdown

IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def report_parts(run: RunDir) -> list[str | Path]:
    """report.md (or, without one, the Markdown made from report.json) as Markdown text and image files, in order.

    Images that are not files inside the run directory stay in the text as they are.
    """
    file = run.report_md
    if file.is_file():
        text = file.read_text(encoding="utf-8")
    elif run.report_json.is_file():
        text = markdown(run.report())
    else:
        return [f"`{run.path}` has no report yet; it is written as the run's stages finish."]
    parts: list[str | Path] = []
    start = 0
    for match in IMAGE.finditer(text):
        image = (run.path / match.group(1)).resolve()
        if image.is_file() and image.is_relative_to(run.path):
            parts += [text[start : match.start()], image]
            start = match.end()
    parts.append(text[start:])
    return [part for part in parts if not isinstance(part, str) or part.strip()]

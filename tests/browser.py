"""Open an HTML page in headless Chromium with the network off and report what plotly drew.

Reusable by any test that must show an HTML artefact renders offline (figures here; notebooks
exported to HTML later)::

    from browser import render_offline
    r = render_offline(path)
    assert r.plots >= 1 and r.plots == r.graphs and r.drawn >= 1, r.summary()

The network is cut two ways: Chromium runs in a fresh network namespace (``unshare -rn``: only a
loopback that is down) when the kernel allows it, and it is always given a proxy that does not
exist and a host resolver that maps every name to nothing, so even without a namespace no
request leaves the machine.  ``--dump-dom`` after a virtual-time budget returns the DOM once the
page's scripts have run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-extensions",
                  "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                  "--host-resolver-rules=MAP * ~NOTFOUND"]


def chromium() -> str | None:
    from interp.figures import find_chromium
    return find_chromium()


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


@dataclass
class Rendered:
    plots: int       # plotly graph divs that got their <svg class="main-svg">
    graphs: int      # plotly graph divs on the page, drawn or not
    drawn: int       # drawn traces: scatter/bar/... trace groups and heatmap images
    isolation: str   # how the network was cut
    dom: str

    def summary(self) -> str:
        return (f"{self.plots} of {self.graphs} plot(s) drawn, {self.drawn} drawn trace(s), "
                f"network off by {self.isolation}")


def render_offline(html: str | Path, *, budget_ms: int = 8000, timeout: float = 90) -> Rendered:
    """Load ``html`` (a file) in headless Chromium without network; count plotly's drawn elements."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("no Chromium found (Debian: apt-get install chromium; or set BROWSER_PATH)")
    url = Path(html).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
               "--dump-dom", url]
        isolation = "proxy + resolver rules"
        if _can_unshare():
            cmd, isolation = ["unshare", "-rn", *cmd], "a network namespace (unshare -rn) + proxy + resolver rules"
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    dom = r.stdout
    graph_divs = re.split(r'<div [^>]*class="[^"]*plotly-graph-div', dom)[1:]   # each: its div up to the next
    plots = sum('<svg class="main-svg"' in g for g in graph_divs)   # 2-3 main-svg layers per drawn plot
    drawn = len(re.findall(r'<g class="trace[ "]', dom)) \
        + len(re.findall(r'<g class="hm"><image [^>]*href="data:image/png;base64,', dom))  # heatmaps
    return Rendered(plots, len(graph_divs), drawn, isolation, dom)

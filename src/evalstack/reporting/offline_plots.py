"""An HTML template for `dvc plots show/diff` that renders without internet access.

dvc-render's default page loads vega, vega-lite and vega-embed from a CDN, so on an
offline machine the page stays empty. This template inlines the same three libraries
(bundled by vl-convert-python, a pinned PyPI dependency) and leaves out dvc-render's
`{scripts}` placeholder, so the CDN tags are never written into the page.
"""
from __future__ import annotations

from pathlib import Path

from evalstack.core.atomic import atomic_write_bytes

# The Vega-Lite major version of DVC's built-in plot templates ("$schema": …/vega-lite/v5.json).
VEGA_LITE_VERSION = "5.20"
# Relative to the .dvc directory, as `dvc config plots.html_template` expects; .dvc/tmp is git-ignored.
TEMPLATE_IN_DVC_DIR = "tmp/plots-offline.html"
# Placeholders dvc-render substitutes; the bundle must not contain them, or they would be replaced.
DVC_RENDER_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

PAGE_HEAD = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>DVC plots</title>
<style>
body { font-family: sans-serif; margin: 16px; }
table { border-spacing: 15px; }
</style>
<script type="text/javascript">
"""
PAGE_TAIL = """
</script>
</head>
<body>
{plot_divs}
</body>
</html>
"""


class OfflinePlotsError(RuntimeError):
    pass


def vega_bundle(vl_version: str = VEGA_LITE_VERSION) -> str:
    """vega + vega-lite + vega-embed as one classic script that sets window.vegaEmbed."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=vl_version)
    for placeholder in DVC_RENDER_PLACEHOLDERS:
        if placeholder in bundle:
            raise OfflinePlotsError(f"the vega bundle contains dvc-render's placeholder {placeholder}")
    # Inline scripts end at the first "</script": escape any occurrence inside string literals.
    return bundle.replace("</script", "<\\/script")


def offline_template(vl_version: str = VEGA_LITE_VERSION) -> str:
    return PAGE_HEAD + vega_bundle(vl_version) + PAGE_TAIL


def install_offline_template(repo_root: Path) -> Path:
    """Write the template under .dvc/tmp and make it this clone's `plots.html_template`.

    The setting goes to .dvc/config.local (per machine, not in git) because the file it
    names is generated per machine too.
    """
    from dvc.config import Config

    dvc_dir = repo_root / ".dvc"
    if not dvc_dir.is_dir():
        raise OfflinePlotsError(f"{repo_root} is not a DVC repository (no .dvc directory)")
    path = dvc_dir / TEMPLATE_IN_DVC_DIR
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, offline_template().encode("utf-8"))
    with Config(dvc_dir=str(dvc_dir)).edit("local") as config:
        config.setdefault("plots", {})["html_template"] = TEMPLATE_IN_DVC_DIR
    return path

"""The HTML of a live view: a viewer page per stream, and an index of the sources when there are several.

Pure: strings in, bytes out; every name is escaped. The pictures are scaled to the window by the page
(``object-fit: contain``), so any frame size fills the browser without scrolling or cropping.
"""

from __future__ import annotations

from html import escape

from protos.liveview.feeds import FeedStatus

_STYLE = """html,body{margin:0;height:100%;background:#111;color:#ddd;font:15px system-ui,sans-serif}
a{color:#8cf}"""


def viewer_page(title: str, stream_path: str, back_link: str = "") -> bytes:
    """One stream filling the window; ``back_link``: the index's address, shown above the picture."""
    header = (f'<header><a href="{escape(back_link)}">all</a> &middot; {escape(title)}</header>'
              if back_link else "")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{escape(title)}</title>
<style>{_STYLE}
body{{display:flex;flex-direction:column}}
header{{flex:none;padding:4px 8px}}
img{{display:block;flex:1;min-height:0;width:100%;height:100%;object-fit:contain}}</style></head>
<body>{header}<img src="{escape(stream_path)}" alt="{escape(title)}"></body></html>
""".encode()


def index_page(title: str, kind: str, statuses: list[FeedStatus], waiting_picture: str) -> bytes:
    """Every source as a link to its page, with a snapshot refreshed each second; a placeholder before any.

    A script polls ``/healthz`` and reloads the page when a source appears or is replaced.
    """
    if statuses:
        cards = "\n".join(
            f'<a class="feed" href="/{kind}/{escape(s.name)}" data-name="{escape(s.name)}">'
            f'<img src="/{kind}/{escape(s.name)}/frame.jpg" alt="{escape(kind)} {escape(s.name)}">'
            f'<span>{escape(kind)} {escape(s.name)} &middot; <b class="state">{escape(s.state)}</b></span></a>'
            for s in statuses)
    else:
        cards = (f'<div class="feed"><img src="{escape(waiting_picture)}" alt="waiting for frames">'
                 f"<span>no {escape(kind)} has sent a frame yet</span></div>")
    names = ",".join(s.name for s in statuses)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{escape(title)}</title>
<style>{_STYLE}
h1{{font-size:18px;margin:8px}}
#feeds{{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:8px;margin:8px}}
.feed{{display:flex;flex-direction:column;background:#1b1b1b;text-decoration:none;color:#ddd}}
.feed img{{width:100%;aspect-ratio:4/3;object-fit:contain;background:#000}}
.feed span{{padding:4px 6px}}</style></head>
<body><h1>{escape(title)}</h1>
<div id="feeds" data-names="{escape(names)}">
{cards}
</div>
<script>
const shown = document.getElementById("feeds").dataset.names;
async function tick() {{
  try {{
    const reply = await fetch("/healthz", {{cache: "no-store"}});
    const feeds = (await reply.json()).feeds;
    if (feeds.map(f => f.name).join(",") !== shown) {{ location.reload(); return; }}
    for (const f of feeds) {{
      const card = document.querySelector(`.feed[data-name="${{CSS.escape(f.name)}}"]`);
      if (!card) continue;
      card.querySelector(".state").textContent = f.state;
      card.querySelector("img").src = `/{kind}/${{encodeURIComponent(f.name)}}/frame.jpg?t=${{Date.now()}}`;
    }}
  }} catch (err) {{}}
}}
setInterval(tick, 1000);
</script></body></html>
""".encode()

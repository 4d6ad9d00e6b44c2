"""The web UI (`dsfs ui`): pages to browse, compare and manage a store's datasets in a browser.

`dsfs.ui.app.create_app` builds the Starlette application; `dsfs.ui.content` reads versions for it
(folder pages, file views, streamed bytes and archives, compare pages) through the node's verified
read path; `dsfs.ui.charts` computes the SVG pictures. Templates and static assets ship inside the
package (no CDN: the pages work with no internet access). docs/ui.md describes the pages and the
security model. Needs the `ui` extra: `pip install 'dsfs[ui]'`.
"""

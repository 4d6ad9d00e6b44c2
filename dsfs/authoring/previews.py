"""Previews and statistics: what is in a version, seen before anyone fetches it.

A version's previews are objects in the store beside it (`previews/<id>/`, dsfs.store.layout): one
small JSON *item* per report, and content-addressed *blobs* for what is big (an image). Like labels,
they may be added to a final version at any time without changing its files. `push` copies them,
`delete` removes them, `gc` leaves them alone (it deletes packs only).

Two sources:

- **Statistics**, made at close from the version's file table with no byte of a file read: files
  and bytes by extension and by top-level folder, a histogram of file sizes (powers of two), and
  what the version added, modified and removed against its parents. `dsfs stats --recompute`
  makes them again for any final version. They hold paths' extensions and folder names only.
- **The ClearML logger API** (`Dataset.get_logger()`): `report_table` (rows of a pandas DataFrame,
  a list of rows, a dict of columns or a CSV file), `report_histogram`, `report_scalar`,
  `report_text`, `report_image` / `report_media` (a local file, or an image given as a Pillow
  image or an array when Pillow is installed: `pip install 'dsfs[preview]'`). Each call writes one
  item. Limits (LIMITS) are checked before anything is written, with a message naming the limit.

Reading: every item is parsed defensively (a store may be written by anyone): an item that is not
a JSON object of a known kind, or is bigger than its limit, is left out with a note, and a blob is
served only if its bytes hash to its name.
"""

from __future__ import annotations

import csv
import io
import json
import math
import mimetypes
import os
from collections import Counter
from collections.abc import Iterable

from dsfs.errors import DsfsError, UsageError
from dsfs.model import VersionInfo, utc_now
from dsfs.store.layout import PREVIEW_LIMIT, Store

KINDS = ("statistics", "table", "histogram", "scalar", "text", "image", "media")
LIMITS = {"item_bytes": 1 << 20, "blob_bytes": PREVIEW_LIMIT, "rows": 100, "columns": 100, "values": 10_000,
          "text": 64 << 10, "items": 1_000}
TOP_GROUPS = 50  # extensions and folders shown by name; the rest are summed as "(other)"


# -- statistics ----------------------------------------------------------------------------------


def file_statistics(files: Iterable[tuple[str, int]], counts: dict | None = None) -> dict:
    """Statistics of a version from its (path, size) pairs alone (no file is read): a file table's
    columns at close, or the version's entries streamed (`dsfs stats --recompute`)."""
    # Paths come sorted, so a top folder's files are consecutive: its name is sliced out once, and
    # each file costs a startswith and one dict operation on its extension (0.93 -> 0.57 us a file
    # of a 1,000,000-file version against a (extension, folder) key built per file). Any order
    # gives the same result; out of order, a folder is only looked up more often.
    groups: dict[str | None, dict[str, list[int]]] = {}  # top folder -> {extension as written: [n, bytes]}
    sizes = [0] * 66  # bin k holds sizes in [2^(k-1), 2^k); sizes are int64
    total = 0
    prefix, extensions = "\0", {}  # "\0" starts no path: the first file looks its folder up
    for path, size in files:
        if not path.startswith(prefix):
            slash = path.find("/")
            # a top-level file keeps prefix "\0", so the next file looks its folder up again
            prefix = path[:slash + 1] if slash >= 0 else "\0"
            extensions = groups.setdefault(path[:slash] if slash >= 0 else None, {})
        dot = path.rfind(".")
        # (a dot in the name that is not its first character begins an extension)
        extension = path[dot:] if dot > path.rfind("/") + 1 else ""
        group = extensions.get(extension)
        if group is None:
            extensions[extension] = [1, size]
        else:
            group[0] += 1
            group[1] += size
        sizes[size.bit_length()] += 1
        total += size
    by_extension: Counter = Counter()
    bytes_by_extension: Counter = Counter()
    by_folder: Counter = Counter()
    bytes_by_folder: Counter = Counter()
    for folder, found in groups.items():
        folder = "(top level)" if folder is None else folder
        for extension, (n, nbytes) in found.items():
            extension = extension.lower() or "(none)"
            by_extension[extension] += n
            bytes_by_extension[extension] += nbytes
            by_folder[folder] += n
            bytes_by_folder[folder] += nbytes
    return {"files": sum(by_extension.values()), "bytes": total,
            "by_extension": _grouped(by_extension, bytes_by_extension),
            "by_folder": _grouped(by_folder, bytes_by_folder),
            "size_histogram": [{"from": 0 if k == 0 else 1 << (k - 1), "to": 1 << k if k else 1, "files": n}
                               for k, n in enumerate(sizes) if n],
            "changes": dict(counts or {})}


def sample_candidates(files: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """The files `auto_previews` would look at, by path: the first AUTO_TABLES table files that fit
    the sample limit (and the too-big ones before them, to be noted), the first IMAGE_SAMPLE images
    and the first AUTO_MEDIA other media files. Stops reading `files` once it has them all."""
    out: list[tuple[str, int]] = []
    tables = fitting = images = media = 0
    for path, size in files:
        kind = _kind(path)
        if kind is None:
            continue
        if kind == "image":
            if images < IMAGE_SAMPLE:
                out.append((path, size))
            images += 1
        elif kind == "media":
            if media < AUTO_MEDIA:
                out.append((path, size))
            media += 1
        elif fitting < AUTO_TABLES and tables < 10 * AUTO_TABLES:
            out.append((path, size))
            tables += 1
            fitting += size <= SAMPLE_BYTES
        if fitting >= AUTO_TABLES and images >= IMAGE_SAMPLE and media >= AUTO_MEDIA:
            break
    return out


def _kind(path: str) -> str | None:
    """"image", "media", a table format (TABLE_FORMATS) or None, by the path's extension."""
    dot = path.rfind(".")
    if dot < 0 or "/" in path[dot:]:
        return None
    extension = path[dot:].lower()
    if extension in IMAGE_FORMATS:
        return "image"
    if extension in MEDIA_FORMATS:
        return "media"
    return TABLE_FORMATS.get(extension)


def _grouped(files: Counter, nbytes: Counter) -> list[dict]:
    # ties by name: the same rows whatever order the files came in
    top = sorted(files.items(), key=lambda item: (-item[1], item[0]))[:TOP_GROUPS]
    rows = [{"name": name, "files": n, "bytes": nbytes[name]} for name, n in top]
    rest = set(files) - {name for name, _ in top}
    if rest:
        rows.append({"name": "(other)", "files": sum(files[r] for r in rest), "bytes": sum(nbytes[r] for r in rest)})
    return rows


def write_statistics(store: Store, info: VersionInfo, files: Iterable[tuple[str, int]],
                     counts: dict | None = None) -> dict:
    stats = file_statistics(files, counts)
    _write_item(store, info, {"kind": "statistics", "title": "files", "series": "", "statistics": stats})
    return stats


def statistics(store: Store, info: VersionInfo) -> dict | None:
    """The latest statistics item of a version, or None."""
    found = [item for item in read_items(store, info)[0] if item["kind"] == "statistics"]
    return found[-1]["statistics"] if found else None


# -- items ---------------------------------------------------------------------------------------


def _write_item(store: Store, info: VersionInfo, item: dict) -> None:
    item = {**item, "created": utc_now()}
    data = json.dumps(item, sort_keys=True, default=_plain).encode()
    if len(data) > LIMITS["item_bytes"]:
        raise UsageError(f"a {item['kind']} preview of {len(data)} bytes is over the limit of "
                         f"{LIMITS['item_bytes']} bytes; report fewer rows, columns or values")
    if len(store.preview_item_names(info.id)) >= LIMITS["items"]:
        raise UsageError(f"dataset {info.id} has {LIMITS['items']} previews already, the limit")
    store.write_preview_item(info.id, data)


def _write_blob_item(store: Store, info: VersionInfo, data: bytes, item: dict) -> None:
    """An item holding `data` (an image, a media file) as a blob: the blob first, then the item
    naming it by digest, so no item ever names a blob that is not there."""
    digest = store.write_preview_blob(info.id, data)
    _write_item(store, info, {**item, "blob": digest, "bytes": len(data)})


def _plain(value):
    """JSON for what json does not know: numpy scalars and arrays, dates, anything else as text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def read_items(store: Store, info: VersionInfo) -> tuple[list[dict], list[str]]:
    """(the version's items, oldest first; notes on the items left out and why)."""
    items, notes = [], []
    for name in store.preview_item_names(info.id):
        data = store.read_preview_item(info.id, name, LIMITS["item_bytes"])
        if data is None:
            continue
        try:
            if len(data) > LIMITS["item_bytes"]:
                raise ValueError("over the size limit")
            item = json.loads(data)
            if not (isinstance(item, dict) and item.get("kind") in KINDS and isinstance(item.get("title", ""), str)):
                raise ValueError("not a preview item")
        except (ValueError, UnicodeDecodeError) as exc:
            notes.append(f"preview {name} of dataset {info.id} left out: {exc}")
            continue
        items.append(item)
    return items, notes


def blob(store: Store, info: VersionInfo, name: str) -> bytes:
    """A preview's blob (an image), its bytes checked against its name."""
    return store.read_preview_blob(info.id, name, LIMITS["blob_bytes"])


# -- automatic previews at close ----------------------------------------------------------------

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                 ".parquet": "parquet", ".npy": "npy"}
AUTO_TABLES = 10  # table files previewed at close
SAMPLE_ROWS = 1_000  # rows of each read for its column statistics
SAMPLE_BYTES = 8 << 20  # the largest table file read for a preview
HEAD_ROWS = 10
MODES = ("auto", "stats", "none")


IMAGE_FORMATS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")
MEDIA_FORMATS = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".mp4", ".avi", ".mov", ".mkv", ".webm")
AUTO_IMAGES = 10  # thumbnails made at close (ClearML's automatic previews: up to 10 images)
IMAGE_SAMPLE = 100  # images whose width and height are histogrammed ...
IMAGE_SAMPLE_BYTES = 64 << 20  # ... reading at most so many bytes of them in all
IMAGE_MAX_PIXELS = 64_000_000  # a bigger image is noted, not decoded (a decompression bomb)
THUMBNAIL = 256  # pixels of a thumbnail's longer side
AUTO_MEDIA = 10  # other media files listed by path and size (nothing of them is read)


def auto_previews(store: Store, info: VersionInfo, files: Iterable[tuple[str, int]], read) -> list[str]:
    """The automatic previews of a version, from the files `sample_candidates` chose (path, size);
    `read(path)` gives the verified bytes of one.

    - tables: schema, the first HEAD_ROWS rows and per-column statistics of up to SAMPLE_ROWS rows
      of each of the first AUTO_TABLES table files, the sample recorded;
    - images (with Pillow): thumbnails of the first AUTO_IMAGES, and histograms of the width and
      height of the first IMAGE_SAMPLE (at most IMAGE_SAMPLE_BYTES read), the sample recorded;
    - other media: a table of their paths and sizes.

    A file that cannot be read or parsed is skipped with a note, kept as a "preview notes" text;
    nothing here makes close fail. Returns the notes."""
    notes: list[str] = []
    done = 0
    images = _ImageSample(store, info, notes)
    media: list[list] = []
    for path, size in files:
        kind = _kind(path)
        if kind == "image":
            images.add(path, size, read)
            continue
        if kind == "media":
            media.append([path, size])
            continue
        if kind is None or done >= AUTO_TABLES:
            continue
        if size > SAMPLE_BYTES:
            notes.append(f"{path}: {size} bytes, over the {SAMPLE_BYTES}-byte sample limit; not previewed")
            continue
        try:
            columns, rows = _parse_table(kind, read(path))
        except _Unavailable as exc:
            notes.append(f"{path}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - a file that does not parse is noted, never fatal
            notes.append(f"{path}: not previewed ({type(exc).__name__}: {str(exc)[:200]})")
            continue
        sample = rows[:SAMPLE_ROWS]
        _write_item(store, info, {"kind": "table", "title": path, "series": "preview", "iteration": 0,
                                  "columns": columns, "rows": sample[:HEAD_ROWS], "truncated": len(rows) > HEAD_ROWS,
                                  "column_statistics": [column_statistics(name, [r[i] if i < len(r) else None
                                                                                 for r in sample])
                                                        for i, name in enumerate(columns[: LIMITS["columns"]])],
                                  "sample_rows": len(sample), "automatic": True})
        done += 1
    images.finish()
    if media:
        _write_item(store, info, {"kind": "table", "title": "media files", "series": "preview", "iteration": 0,
                                  "columns": ["path", "bytes"], "rows": media[:AUTO_MEDIA],
                                  "truncated": len(media) > AUTO_MEDIA, "automatic": True})
    if notes:
        _write_item(store, info, {"kind": "text", "title": "preview notes", "series": "",
                                  "text": "\n".join(notes[:100])})
    return notes


class _ImageSample:
    """The images of an automatic preview: thumbnails of the first few, the sizes of a sample."""

    def __init__(self, store: Store, info: VersionInfo, notes: list[str]):
        self.store, self.info, self.notes = store, info, notes
        self.widths: list[int] = []
        self.heights: list[int] = []
        self.thumbnails = 0
        self.bytes_read = 0
        self.pillow = _pillow()
        if self.pillow is None:
            notes.append("images are not previewed: that needs Pillow (pip install 'dsfs[preview]')")

    def add(self, path: str, size: int, read) -> None:
        if self.pillow is None or len(self.widths) >= IMAGE_SAMPLE:
            return
        if size > SAMPLE_BYTES or self.bytes_read + size > IMAGE_SAMPLE_BYTES:
            self.notes.append(f"{path}: {size} bytes, over the image sample's limit; not previewed")
            return
        self.bytes_read += size
        try:
            image = self._open(read(path))
            self.widths.append(image.width)
            self.heights.append(image.height)
            if self.thumbnails < AUTO_IMAGES:
                self._thumbnail(path, image)
                self.thumbnails += 1
        except DsfsError:
            raise  # the store or the node cache failed: not the image's fault
        except Exception as exc:  # noqa: BLE001 - an image that does not decode is noted, never fatal
            self.notes.append(f"{path}: not previewed ({type(exc).__name__}: {str(exc)[:200]})")

    def _open(self, data: bytes):
        Image = self.pillow
        image = Image.open(io.BytesIO(data))  # reads the header only
        if image.width * image.height > IMAGE_MAX_PIXELS:
            raise ValueError(f"{image.width}x{image.height} pixels, over the limit of {IMAGE_MAX_PIXELS}")
        return image

    def _thumbnail(self, path: str, image) -> None:
        image.draft("RGB", (THUMBNAIL, THUMBNAIL))  # JPEG: decode at a reduced scale
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        out = io.BytesIO()
        if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        image.save(out, format="PNG", optimize=True)
        _write_blob_item(self.store, self.info, out.getvalue(),
                         {"kind": "image", "title": path, "series": "thumbnail", "iteration": 0, "mime": "image/png",
                          "name": os.path.splitext(os.path.basename(path))[0] + ".png", "automatic": True,
                          "width": image.width, "height": image.height})

    def finish(self) -> None:
        """The width and height histograms of the sample (10 bins each)."""
        for title, values in (("image width", self.widths), ("image height", self.heights)):
            if not values:
                continue
            stats = column_statistics(title, values)
            low, width = stats["histogram"]["from"], stats["histogram"]["width"]
            counts = stats["histogram"]["counts"]
            if stats["min"] == stats["max"]:  # every image the same size: one bar, not nine empty ones
                labels, counts = [f"{low:g}"], [len(values)]
            else:
                labels = [f"{low + i * width:g}-{low + (i + 1) * width:g}" for i in range(10)]
            _write_item(self.store, self.info, {"kind": "histogram", "title": title, "series": "images",
                                                "iteration": 0, "values": counts,
                                                "xlabels": labels, "xaxis": "pixels", "yaxis": "images",
                                                "labels": None, "layout": {}, "statistics": stats,
                                                "sample_files": len(values), "automatic": True})


def _pillow():
    """Pillow's Image module, or None when it is not installed. (Decompression bombs: _ImageSample
    checks the pixel count in the header, below Pillow's own warning, before decoding anything.)"""
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


class _Unavailable(Exception):
    """A preview needs a library that is not installed."""


def _parse_table(kind: str, data: bytes) -> tuple[list[str], list[list]]:
    if kind in ("csv", "tsv"):
        text = data.decode("utf-8", errors="replace").splitlines()
        reader = csv.reader(text, "excel-tab" if kind == "tsv" else "excel")
        header = next(reader, [])
        rows = [[_number(v) for v in row] for _, row in zip(range(SAMPLE_ROWS), reader, strict=False)]
        return header, rows
    if kind == "jsonl":
        records = [json.loads(line) for line in data.decode("utf-8").splitlines()[:SAMPLE_ROWS] if line.strip()]
        columns = list(dict.fromkeys(k for r in records if isinstance(r, dict) for k in r))
        return columns, [[_cell(r.get(c)) if isinstance(r, dict) else None for c in columns] for r in records]
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise _Unavailable("Parquet needs pyarrow: pip install 'dsfs[preview]'") from None
        table = pq.ParquetFile(io.BytesIO(data)).iter_batches(batch_size=SAMPLE_ROWS)
        batch = next(table, None)
        if batch is None:
            return [], []
        return batch.schema.names, [[_cell(v) for v in row.values()] for row in batch.to_pylist()]
    try:
        import numpy
    except ImportError:
        raise _Unavailable("NPY needs numpy: pip install 'dsfs[preview]'") from None
    array = numpy.load(io.BytesIO(data), allow_pickle=False)  # never unpickle what a file holds
    array = array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(-1, 1)
    return [f"c{i}" for i in range(array.shape[1])], [[_cell(v) for v in row] for row in array[:SAMPLE_ROWS].tolist()]


def _number(text: str):
    """A CSV cell as a number where it reads as one (for its column's statistics)."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text if text != "" else None


def column_statistics(name: str, values: list) -> dict:
    """One column's statistics, in the style of the Hugging Face dataset viewer: count and nulls;
    for numbers min, max, mean, std and a 10-bin histogram; for strings distinct counts, and the
    frequencies when there are few (categorical)."""
    present = [v for v in values if v is not None]
    out: dict = {"name": name, "count": len(values), "nulls": len(values) - len(present)}
    numbers = [v for v in present if isinstance(v, int | float) and not isinstance(v, bool)]
    if present and len(numbers) == len(present):
        low, high = min(numbers), max(numbers)
        mean = sum(numbers) / len(numbers)
        std = math.sqrt(sum((v - mean) ** 2 for v in numbers) / len(numbers))
        width = (high - low) / 10 or 1
        bins = [0] * 10
        for v in numbers:
            bins[min(9, int((v - low) / width))] += 1
        out.update(type="number", min=low, max=high, mean=mean, std=std,
                   histogram={"from": low, "width": width, "counts": bins})
    else:
        texts = Counter(str(v) for v in present)
        out.update(type="string", distinct=len(texts))
        if 0 < len(texts) <= 20:
            out["frequencies"] = dict(texts.most_common())
    return out


# -- the ClearML logger API ----------------------------------------------------------------------


class PreviewLogger:
    """ClearML's `Dataset.get_logger()`: reports kept as the version's previews (see the module
    docstring). `iteration` and the layout arguments are kept as given; dsfs draws nothing itself."""

    def __init__(self, store: Store, info: VersionInfo):
        self.store, self.info = store, info

    def report_table(self, title: str, series: str, iteration: int = 0, table_plot=None, csv: str | None = None,
                     url: str | None = None, extra_layout: dict | None = None, extra_data: dict | None = None) -> None:
        """A table: `table_plot` (a pandas DataFrame, a list of rows whose first is the header, or a
        dict of columns) or `csv` (a local path); the first LIMITS["rows"] rows are kept."""
        if sum(x is not None for x in (table_plot, csv, url)) != 1:
            raise UsageError("report_table takes one of table_plot, csv or url")
        if url is not None:
            raise UsageError("report_table(url=...): dsfs keeps tables it can read; download it and pass csv=")
        columns, rows = _csv_rows(csv) if csv is not None else _table_rows(table_plot)
        if len(columns) > LIMITS["columns"]:
            raise UsageError(f"a table of {len(columns)} columns is over the limit of {LIMITS['columns']}")
        _write_item(self.store, self.info, {"kind": "table", "title": title, "series": series, "iteration": iteration,
                                            "columns": columns, "rows": rows[: LIMITS["rows"]],
                                            "truncated": len(rows) > LIMITS["rows"], "layout": extra_layout or {}})

    def report_histogram(self, title: str, series: str, values, iteration: int = 0, labels=None, xlabels=None,
                         xaxis: str | None = None, yaxis: str | None = None, mode: str | None = None,
                         extra_layout: dict | None = None) -> None:
        """A histogram: one value per bin (`xlabels` names the bins), as ClearML takes it."""
        values = _values(values)
        if len(values) > LIMITS["values"]:
            raise UsageError(f"a histogram of {len(values)} values is over the limit of {LIMITS['values']}")
        _write_item(self.store, self.info, {"kind": "histogram", "title": title, "series": series,
                                            "iteration": iteration, "values": values,
                                            "labels": _values(labels) if labels is not None else None,
                                            "xlabels": _values(xlabels) if xlabels is not None else None,
                                            "xaxis": xaxis, "yaxis": yaxis, "layout": extra_layout or {}})

    def report_scalar(self, title: str, series: str, value: float, iteration: int = 0) -> None:
        _write_item(self.store, self.info, {"kind": "scalar", "title": title, "series": series,
                                            "iteration": iteration, "value": value})

    def report_text(self, msg: str, level: int | None = None, print_console: bool = False, *args, **kwargs) -> None:
        text = str(msg)
        if len(text.encode()) > LIMITS["text"]:
            raise UsageError(f"a text of {len(text.encode())} bytes is over the limit of {LIMITS['text']}")
        if print_console:
            print(text)
        _write_item(self.store, self.info, {"kind": "text", "title": "text", "series": "", "text": text})

    def report_image(self, title: str, series: str, iteration: int = 0, local_path: str | None = None,
                     image=None, matrix=None, url: str | None = None, max_image_history: int | None = None,
                     delete_after_upload: bool = False) -> None:
        """An image: a local file, or `image`/`matrix` (a Pillow image or an array, with Pillow)."""
        picture = image if image is not None else matrix
        if sum(x is not None for x in (local_path, picture, url)) != 1:
            raise UsageError("report_image takes one of local_path, image or url")
        if url is not None:
            raise UsageError("report_image(url=...): dsfs keeps images it can read; pass local_path=")
        if local_path is not None:
            data, mime = _read_local(local_path), mimetypes.guess_type(local_path)[0] or "application/octet-stream"
        else:
            data, mime = _png(picture), "image/png"
        self._blob_item("image", title, series, iteration, data, mime, os.path.basename(local_path or "image.png"))
        if delete_after_upload and local_path is not None:
            os.remove(local_path)

    def report_media(self, title: str, series: str, iteration: int = 0, local_path: str | None = None,
                     stream=None, file_extension: str | None = None, url: str | None = None,
                     delete_after_upload: bool = False) -> None:
        """A media file (audio, video, HTML...): a local file or a binary stream."""
        if sum(x is not None for x in (local_path, stream, url)) != 1:
            raise UsageError("report_media takes one of local_path, stream or url")
        if url is not None:
            raise UsageError("report_media(url=...): dsfs keeps media it can read; pass local_path=")
        if local_path is not None:
            data, name = _read_local(local_path), os.path.basename(local_path)
        else:
            data = stream.read(LIMITS["blob_bytes"] + 1)
            data = data.encode() if isinstance(data, str) else bytes(data)
            name = "media" + (file_extension or "")
        if len(data) > LIMITS["blob_bytes"]:
            raise UsageError(f"media of more than {LIMITS['blob_bytes']} bytes is over the limit")
        self._blob_item("media", title, series, iteration, data, mimetypes.guess_type(name)[0] or "", name)
        if delete_after_upload and local_path is not None:
            os.remove(local_path)

    def _blob_item(self, kind: str, title: str, series: str, iteration: int, data: bytes, mime: str,
                   name: str) -> None:
        _write_blob_item(self.store, self.info, data, {"kind": kind, "title": title, "series": series,
                                                       "iteration": iteration, "mime": mime, "name": name})


def _read_local(path: str) -> bytes:
    try:
        size = os.path.getsize(path)
        if size > LIMITS["blob_bytes"]:
            raise UsageError(f"{path} ({size} bytes) is over the preview limit of {LIMITS['blob_bytes']} bytes")
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None


def _png(picture) -> bytes:
    Image = _pillow()
    if Image is None:
        raise UsageError("an image given as an object needs Pillow: pip install 'dsfs[preview]' "
                         "(or pass local_path=)")
    if not isinstance(picture, Image.Image):
        try:
            picture = Image.fromarray(picture)
        except (AttributeError, TypeError, ValueError) as exc:
            raise UsageError(f"report_image(image=...) takes a Pillow image or an array of pixels: {exc}") from None
    out = io.BytesIO()
    picture.save(out, format="PNG")
    if out.tell() > LIMITS["blob_bytes"]:
        raise UsageError(f"the image is {out.tell()} bytes as PNG, over the limit of {LIMITS['blob_bytes']}")
    return out.getvalue()


def _table_rows(table) -> tuple[list[str], list[list]]:
    """(columns, rows) of a pandas DataFrame, a list of rows (the first is the header) or a dict of
    columns."""
    if hasattr(table, "columns") and hasattr(table, "head"):  # a pandas DataFrame, without importing pandas
        head = table.head(LIMITS["rows"] + 1)
        return [str(c) for c in head.columns], [[_cell(v) for v in row] for row in head.itertuples(index=False)]
    if isinstance(table, dict):
        columns = [str(c) for c in table]
        length = max((len(v) for v in table.values()), default=0)
        return columns, [[_cell(table[c][i]) if i < len(table[c]) else None for c in table]
                         for i in range(min(length, LIMITS["rows"] + 1))]
    if isinstance(table, list | tuple) and table and all(isinstance(r, list | tuple) for r in table):
        return [str(c) for c in table[0]], [[_cell(v) for v in row] for row in table[1: LIMITS["rows"] + 2]]
    raise UsageError("report_table(table_plot=...) takes a pandas DataFrame, a list of rows (a header first) "
                     "or a dict of columns")


def _values(values) -> list:
    """A list of JSON values from a list, tuple or array (numpy's through tolist)."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [_cell(v) for v in values]


def _cell(value):
    if isinstance(value, float) and not math.isfinite(value):  # NaN (pandas' missing value), infinities
        return None if math.isnan(value) else str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return _plain(value)


def _csv_rows(path: str) -> tuple[list[str], list[list]]:
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            dialect = "excel-tab" if path.endswith((".tsv", ".tab")) else "excel"
            reader = csv.reader(f, dialect)
            header = next(reader, [])
            rows = [row for _, row in zip(range(LIMITS["rows"] + 1), reader, strict=False)]
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    return header, rows


def summary(items: Iterable[dict]) -> str:
    """One line: how many previews of which kind (`dsfs show`)."""
    kinds = Counter(item["kind"] for item in items)
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none"


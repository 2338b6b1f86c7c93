"""Table rows as items rows: one dict per row, image paths checked on threads (or another engine)."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from labelkit.arrays import cell as _cell
from labelkit.readers import chunks as _chunks
from labelkit.readers.image_files import describe_image_file


def describe_text(text: str) -> dict:
    """Return the content hash, byte size, length and `error` of one text cell."""
    data = text.encode("utf-8")
    return {"content_hash": hashlib.sha1(data).hexdigest(), "bytes": len(data),
            "text_length": len(text), "error": None if text.strip() else "empty text"}


def read_table_rows(path: Path, df, cols: dict[str, str | None], *, allow_outside_root: bool,
                    workers: int = 4, map_fn=None, properties: bool = True) -> Iterator[dict]:
    """Yield one item row per table row; image paths resolve relative to the table's folder."""
    root = path.parent.resolve()
    label_col, text_col, image_col = cols["label"], cols["text"], cols["image"]
    split_col, id_col = cols["split"], cols["id"]

    def base(i: int, rec: dict) -> dict:
        row_id = _cell(rec[id_col]) if id_col else str(i)
        return {"id": row_id, "source": f"{path.name}:{i + 2 if path.suffix.lower() in ('.csv', '.tsv') else i + 1}",
                "label": _cell(rec[label_col]), "split": _cell(rec[split_col]) if split_col else None}

    def image_row(args: tuple[int, dict]) -> dict:
        i, rec = args
        row = base(i, rec) | {"modality": "image"}
        raw = _cell(rec[image_col])
        if raw is None:
            return row | {"error": "missing image path"}
        candidate = Path(raw)
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
        inside = resolved == root or root in resolved.parents
        if (candidate.is_absolute() or not inside) and not allow_outside_root:
            return row | {"image_path": str(resolved),
                          "error": f"image path outside the table's folder: {raw} (pass --allow-outside-root)"}
        if not resolved.is_file():
            return row | {"image_path": str(resolved), "error": f"image file not found: {raw}"}
        return row | {"image_path": str(resolved), **describe_image_file(resolved, properties=properties)}

    records = df.to_dict("records")
    if image_col and map_fn is not None:  # another engine (labelkit.engines) checks the files
        yield from map_fn(image_row, enumerate(records))
    elif image_col:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for chunk in _chunks(enumerate(records), 256):
                yield from pool.map(image_row, chunk)
    else:
        for i, rec in enumerate(records):
            text = _cell(rec[text_col]) if text_col else None
            row = base(i, rec) | {"modality": "text", "text": rec[text_col] if text is not None else None}
            yield row | (describe_text(text) if text is not None else {"error": "missing text"})

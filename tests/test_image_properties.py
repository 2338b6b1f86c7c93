"""Image-property check (labelkit/checks/image_properties.py) and its properties (labelkit/properties.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFilter, ImageOps

from labelkit import properties as P
from labelkit.checks.base import CheckContext
from labelkit.checks.image_properties import ImageProperties
from labelkit.ingest import ingest

PLANTED = ("dark", "light", "blurry", "low_information", "grayscale", "odd_aspect_ratio", "odd_size")


def textured(rng, w: int, h: int) -> Image.Image:
    """A colour image with texture at every scale: noise smoothed a little, stretched to 0..255."""
    noise = rng.normal(0, 1, (h, w, 3)).astype(np.float32)
    im = Image.fromarray(((noise - noise.min()) / np.ptp(noise) * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(1))
    return ImageOps.autocontrast(im)


def planted_folder(root, seed: int = 0) -> dict[str, str | None]:
    """Write 16 control images and one planted image per property; return {file name: planted property}."""
    rng = np.random.default_rng(seed)
    truth: dict[str, str | None] = {}

    def save(im: Image.Image, name: str, kind: str | None, ext: str) -> None:
        label = "ab"[len(truth) % 2]
        (root / label).mkdir(parents=True, exist_ok=True)
        im.save(root / label / f"{name}.{ext}", **({"quality": 95} if ext == "jpg" else {}))
        truth[f"{name}.{ext}"] = kind

    for i in range(16):
        save(textured(rng, int(rng.integers(64, 97)), int(rng.integers(64, 97))), f"control{i}", None,
             "jpg" if i % 2 else "png")
    base = textured(rng, 80, 80)
    save(Image.fromarray((np.asarray(base) * 0.2).astype(np.uint8)), "dark", "dark", "png")
    save(Image.fromarray((248 + np.asarray(base) // 40).astype(np.uint8)), "light", "light", "jpg")
    flat = np.full((80, 80, 3), (200, 40, 40), np.uint8)
    flat[20:50, 20:50] = (40, 40, 200)
    save(Image.fromarray(flat), "low_information", "low_information", "png")
    save(base.convert("L"), "grayscale", "grayscale", "jpg")
    save(textured(rng, 240, 48), "odd_aspect_ratio", "odd_aspect_ratio", "png")
    save(textured(rng, 600, 600), "odd_size", "odd_size", "jpg")
    # No detail at all, a spread histogram and a dark border: what CleanVision's blur score calls
    # blurry (its edge image keeps the border pixels, and a peaked histogram vetoes the flag).
    y, x = np.mgrid[:80, :80] + 0.5
    bump = 255 * np.sin(np.pi * x / 80) * np.sin(np.pi * y / 80)
    save(Image.fromarray(np.stack([bump, bump * 0.85, bump * 0.7], -1).astype(np.uint8)), "blurry", "blurry", "png")
    return truth


def run_check(items: pa.Table):
    ctx = CheckContext(ids=items.column("id"), labels=np.zeros(items.num_rows, np.int64), classes=["a"],
                       modality="image", items=items)
    return ImageProperties().run(ctx)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    truth = planted_folder(root / "data")
    ingest(root / "data", root / "ws", workers=0)
    items = pq.read_table(root / "ws" / "items.parquet")
    return root, truth, items


def test_planted_images_are_found_and_controls_are_clean(planted):
    _, truth, items = planted
    result = run_check(items)
    names = [p.rsplit("/", 1)[-1] for p in items.column("id").to_pylist()]
    for row, name in enumerate(names):
        flagged = {t for t in PLANTED if result.columns[f"is_{t}"][row]}
        expected = {truth[name]} if truth[name] else set()
        assert flagged == expected, (name, flagged)
        assert result.columns["is_image_property_issue"][row] == bool(expected)
        assert (result.columns["image_property_score"][row] < 0.5) == bool(expected)
    n = len(names)
    assert result.metrics == {f"{t}_rate": pytest.approx(1 / n) for t in PLANTED}
    dark = names.index("dark.png")
    assert result.reasons[dark].startswith("image is dark: dark score 0.")
    assert "(threshold 0.32;" in result.reasons[dark]
    assert "600×600" in result.reasons[names.index("odd_size.jpg")]
    assert not result.warnings


def test_ingest_writes_nullable_float32_property_columns(planted, tmp_path, cli):
    root, _, items = planted
    for name in P.PROPERTY_COLUMNS:
        assert items.schema.field(name).type == pa.float32()
        assert items.column(name).null_count == 0
    gray = dict(zip([p.rsplit("/", 1)[-1] for p in items.column("id").to_pylist()],
                    items.column("prop_grayscale").to_pylist()))
    assert gray["grayscale.jpg"] == 1.0 and gray["control0.png"] == 0.0

    # The row-by-row path (the Ray engine's) measures the same numbers as the batch path.
    from labelkit.ingest import read_image_folder

    rows = {r["id"]: r for r in read_image_folder(root / "data")}
    for name in P.PROPERTY_COLUMNS:
        assert np.allclose([rows[i][name] for i in items.column("id").to_pylist()],
                           items.column(name).to_numpy(), rtol=1e-6)

    # --no-properties: headers only, columns null; the check then says to re-run ingest.
    code, _, _ = cli("ingest", root / "data", "-w", tmp_path / "bare", "--no-properties", "--workers", "0")
    assert code == 0
    bare = pq.read_table(tmp_path / "bare" / "items.parquet")
    assert all(bare.column(c).null_count == bare.num_rows for c in P.PROPERTY_COLUMNS)
    result = run_check(bare)
    assert "re-run `labelkit ingest`" in result.warnings[0] and result.metrics["dark_rate"] is None

    # Text tables leave them null.
    (tmp_path / "t.csv").write_text("text,label\nhello there,a\ngood bye,b\n")
    ingest(tmp_path / "t.csv", tmp_path / "text", workers=0)
    text = pq.read_table(tmp_path / "text" / "items.parquet")
    assert all(text.column(c).null_count == 2 for c in P.PROPERTY_COLUMNS)


def test_workspace_without_property_columns_warns_and_measures_only_size_and_aspect(planted):
    _, _, items = planted
    old = items.drop_columns(list(P.PROPERTY_COLUMNS))
    result = run_check(old)
    assert result.warnings and "re-run `labelkit ingest`" in result.warnings[0]
    for t in ("dark", "light", "blurry", "low_information", "grayscale"):
        assert result.metrics[f"{t}_rate"] is None
        assert not result.columns[f"is_{t}"].any()
    names = [p.rsplit("/", 1)[-1] for p in old.column("id").to_pylist()]
    assert [names[i] for i in np.flatnonzero(result.columns["is_odd_size"])] == ["odd_size.jpg"]
    assert result.metrics["odd_aspect_ratio_rate"] == pytest.approx(1 / len(names))


def test_scores_follow_cleanvisions_formulas_on_hand_made_arrays():
    # Brightness: sqrt(0.241 R² + 0.691 G² + 0.068 B²) / 255 per pixel; L / 255 for one band.
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[...] = (200, 100, 50)
    rgb[0, :] = (0, 0, 0)  # the darkest tenth
    expected = np.sqrt(0.241 * 200 ** 2 + 0.691 * 100 ** 2 + 0.068 * 50 ** 2) / 255
    b = P.brightness_properties(rgb)
    assert b["prop_brightness_p99"] == pytest.approx(expected)
    assert b["prop_brightness_p5"] == pytest.approx(np.percentile(np.r_[np.zeros(10), np.full(90, expected)], 5))
    assert P.get_dark_scores(np.array([b["prop_brightness_p99"]]))[0] == pytest.approx(expected, abs=1e-6)
    gray = np.full((4, 4), 51, np.uint8)
    assert P.brightness_properties(gray)["prop_brightness_p99"] == pytest.approx(0.2)
    assert P.get_light_scores(np.array([0.97]))[0] == pytest.approx(0.03)

    # Entropy of the histogram (all bands in one): two equal halves = 1 bit; three bands add log2(3).
    half = np.zeros((4, 4), np.uint8)
    half[:2] = 255
    assert P.histogram_entropy(half) == pytest.approx(1.0)
    assert P.histogram_entropy(np.stack([half] * 3, -1)) == pytest.approx(1 + np.log2(3))
    assert P.get_low_information_scores(np.array([2.0, 12.0])) == pytest.approx([0.2, 1.0])

    # Edges: PIL's FIND_EDGES exactly (clipped kernel, border kept), on random images.
    rng = np.random.default_rng(0)
    for shape in [(64, 48), (3, 3), (2, 7)]:
        g = rng.integers(0, 256, shape, dtype=np.uint8)
        assert (P.find_edges(g) == np.asarray(Image.fromarray(g).filter(ImageFilter.FIND_EDGES))).all()
        assert P.histogram_entropy(g) == pytest.approx(Image.fromarray(g).entropy())
    # Blur score: 1 - exp(-0.01 b), plus the histogram term only above 0.18.
    s = P.get_blurry_scores(np.array([10.0, 10.0]), np.array([5.0, 50.0]))
    assert s == pytest.approx([1 - np.exp(-0.1), 1 - np.exp(-0.1) + 1 - np.exp(-0.5)], abs=1e-6)
    flat = np.full((64, 64), 7, np.uint8)
    assert P.blur_properties(flat) == pytest.approx((np.std(P.find_edges(flat)), np.std(np.bincount(flat.ravel(), minlength=256))))

    # Aspect ratio and size.
    assert P.get_odd_aspect_ratio_scores(np.array([400, 100]), np.array([100, 100])) == pytest.approx([0.25, 1.0])
    sizes = np.r_[np.linspace(90, 110, 20), 1000]
    score, threshold = P.get_odd_size_scores(sizes, sizes)
    assert threshold == 0.5 and np.flatnonzero(score < threshold).tolist() == [20]
    score, threshold = P.get_odd_size_scores(np.r_[np.full(9, 32), 64], np.r_[np.full(9, 32), 64])
    assert threshold == 1.0 and np.flatnonzero(score < threshold).tolist() == [9]


def test_equal_channel_rgb_counts_as_grayscale_and_a_grayscale_dataset_is_not_flagged(tmp_path):
    rng = np.random.default_rng(1)
    g = np.asarray(textured(rng, 40, 40).convert("L"))
    assert P.image_properties(Image.fromarray(np.stack([g] * 3, -1)))["prop_grayscale"] == 1.0
    assert P.image_properties(Image.fromarray(np.asarray(textured(rng, 40, 40))))["prop_grayscale"] == 0.0

    n = 10
    table = pa.table({"id": [str(i) for i in range(n)], "width": [40] * n, "height": [40] * n,
                      **{c: pa.array(np.full(n, 0.5), pa.float32()) for c in P.PROPERTY_COLUMNS}})
    mostly_gray = table.set_column(table.schema.get_field_index("prop_grayscale"), "prop_grayscale",
                                   pa.array(np.r_[np.ones(8), np.zeros(2)], pa.float32()))
    result = run_check(mostly_gray)
    assert not result.columns["is_grayscale"].any() and result.details["mostly_grayscale"]
    few_gray = mostly_gray.set_column(mostly_gray.schema.get_field_index("prop_grayscale"), "prop_grayscale",
                                      pa.array(np.r_[np.ones(2), np.zeros(8)], pa.float32()))
    assert run_check(few_gray).columns["is_grayscale"].tolist() == [True, True] + [False] * 8


def test_thumbnail_scores_stay_close_to_full_image_scores_for_large_noisy_images():
    # Sampling pixels (not averaging them) keeps the histogram's spread: a flat colour with faint
    # noise keeps its full-image entropy, which an averaged thumbnail would lower.
    rng = np.random.default_rng(2)
    arr = np.clip(np.array([120, 80, 160]) + rng.normal(0, 1.0, (900, 700, 3)), 0, 255).astype(np.uint8)
    full = Image.fromarray(arr).entropy()
    props = P.image_properties(Image.fromarray(arr))
    assert props["prop_entropy"] == pytest.approx(full, abs=0.05)
    assert props["prop_brightness_p99"] == pytest.approx(np.percentile(P.pixel_brightness(arr), 99), abs=0.01)


def test_issues_writes_the_flags_and_rates(planted, tmp_path):
    from labelkit.embed import embed
    from labelkit.issues import issues

    root, _, _ = planted
    ws = tmp_path / "ws"
    ingest(root / "data", ws, workers=0)
    embed(ws, model="pixels")
    summary = issues(ws, n_folds=2).summary
    table = pq.read_table(ws / "issues.parquet")
    names = [i.rsplit("/", 1)[-1] for i in table.column("id").to_pylist()]
    dark = names.index("dark.png")
    assert table.column("is_dark")[dark].as_py() and not table.column("is_dark")[names.index("control0.png")].as_py()
    assert table.column("reason")[dark].as_py().count("image is dark") == 1
    assert summary["dark_rate"] == pytest.approx(1 / len(names))
    assert summary["checks"]["image_properties"]["flagged"] == len(PLANTED)

"""Real-dataset loaders on small real-format fixtures (tests/fixtures/make_fixtures.py).

The expected values here are recomputed from the fixture definitions and the image pixels,
not from the loaders' own helpers.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import pickletools
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURES
from PIL import Image
from scipy import ndimage

from lookhere.data import pixmo_points as pp
from lookhere.data import refcoco as rc
from lookhere.data import safe_pickle

FIX = FIXTURES
REFER = FIX / "refer"
REFS_P = REFER / "refcoco" / "refs(unc).p"
REFS_JSON = REFER / "refcoco" / "refs(unc).json"
INSTANCES = REFER / "refcoco" / "instances.json"
IMAGES = REFER / "images" / "mscoco" / "images" / "train2014"
PIXMO = FIX / "pixmo_points"
PIXMO_PARQUET = PIXMO / "data" / "train-00000-of-00001.parquet"
EVIL = sorted((FIX / "evil").glob("*.p"))


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIX / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_fixtures", mod)
    spec.loader.exec_module(mod)
    return mod


MF = _fixture_module()
OBJECTS = {ann_id: (image_id, size, colour, shape, params, kind)
           for image_id, _, size, objs in MF.REFER_IMAGES
           for ann_id, _, colour, shape, params, kind in objs}


def refcoco(split=None, **kw) -> rc.RefCoco:
    return rc.RefCoco(REFER, "refcoco", "unc", split, **kw)


def colour_mask(img: Image.Image, colour, tol: int) -> np.ndarray:
    arr = np.asarray(img, dtype=int)
    return (np.abs(arr - np.array(colour)).max(axis=-1) <= tol)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# ---------------------------------------------------------------------------------------------
# RefCOCO: loading, splits, geometry


def test_fixture_size_is_small():
    assert sum(p.stat().st_size for p in FIX.rglob("*") if p.is_file()) < 300_000


@pytest.mark.parametrize("split,refs,exprs", [
    (None, 6, 10), ("train", 2, 3), ("val", 2, 4), ("testA", 1, 2), ("testB", 1, 1),
])
def test_refcoco_split_counts(split, refs, exprs):
    ds = refcoco(split)
    assert ds.refs_path == REFS_JSON  # the converted form is preferred over the pickle
    assert (len(ds), ds.num_expressions) == (refs, exprs)
    expected = {r for r, _, s, _ in MF.REFS if split in (None, s)}
    assert {r.ref_id for r in ds.iter_refs()} == expected
    assert all(e.split == (split or e.split) for e in ds.iter_expressions())
    assert len(list(ds.iter_expressions())) == exprs


def test_refcoco_records_and_boxes():
    inst = json.loads(INSTANCES.read_text())
    anns = {a["id"]: a for a in inst["annotations"]}
    for ref in refcoco().iter_refs():
        x, y, w, h = anns[ref.ann_id]["bbox"]
        assert ref.box == (x, y, x + w, y + h)
        image_id, size, *_ = OBJECTS[ref.ann_id]
        assert (ref.image_id, ref.image_size) == (image_id, size)
        assert ref.image_path.is_file()
        raws = next(r[3] for r in MF.REFS if r[0] == ref.ref_id)
        assert [e.raw for e in ref.expressions] == raws
        assert [e.text for e in ref.expressions] == [s.lower() for s in raws]
        assert ref.category in {"person", "car", "dog"}
    ref0 = next(r for r in refcoco().iter_refs() if r.ref_id == 0)
    assert ref0.box == (8.0, 6.0, 30.0, 26.0)  # the drawn rectangle, x1/y1 exclusive


def test_refcoco_masks_match_drawn_pixels():
    for ref in refcoco().iter_refs():
        _, _, colour, shape, params, kind = OBJECTS[ref.ann_id]
        mask = ref.mask()
        img = ref.load_image()
        assert mask.shape == (img.size[1], img.size[0]) and mask.dtype == bool
        png = ref.image_path.suffix == ".png"
        painted = colour_mask(img, colour, 0 if png else 40)
        if shape == "triangle":  # PIL and COCO rasterise slanted polygon edges differently
            assert iou(mask, painted) > 0.85
        elif png:
            assert np.array_equal(mask, painted), (ref.ann_id, kind)
        else:  # JPEG blurs edges: 2 px inside the mask all painted, 2 px outside none
            inner = ndimage.binary_erosion(mask, iterations=2)
            outer = ~ndimage.binary_dilation(mask, iterations=2)
            assert painted[inner].all() and not painted[outer].any(), (ref.ann_id, kind)
            assert iou(mask, painted) > 0.9, (ref.ann_id, kind)
        ys, xs = np.nonzero(mask)  # the mask fits its box (bbox made from the drawn pixels)
        fit = np.array((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)) - ref.box
        assert np.abs(fit).max() <= (1 if shape == "triangle" else 0), (ref.ann_id, fit)


def test_compressed_rle_decoder_matches_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    for trial in range(50):
        h, w = rng.integers(1, 40, size=2)
        m = rng.random((h, w)) < rng.random()  # from empty to full, many short runs
        if trial % 3 == 0:
            m = np.zeros((h, w), bool)
            m[h // 4: h // 2 + 1, w // 5: w - 1] = True  # long runs: multi-char counts
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        for counts in (rle["counts"], rle["counts"].decode()):
            got = rc.segmentation_to_mask({"size": [int(h), int(w)], "counts": counts}, h, w)
            assert np.array_equal(got, m)


def test_refcoco_to_sample():
    for expr in refcoco().iter_expressions():
        s = rc.to_sample(expr)
        w, h = expr.image_size
        x0, y0, x1, y1 = expr.box
        want = [round(x0 / w, 2), round(y0 / h, 2), round(x1 / w, 2), round(y1 / h, 2)]
        assert json.loads(s.answer) == pytest.approx(want, abs=1e-9)
        assert s.answer == "[" + ", ".join(f"{v:.2f}" for v in want) + "]"
        assert s.structured["box"] == json.loads(s.answer)
        assert s.question == expr.text and s.task == "refcoco"
        assert s.image.size == (w, h) and s.image.mode == "RGB"
        assert s.geometry.boxes == [expr.box] and s.geometry.mask.shape == (h, w)
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        json.dumps(s.meta), json.dumps(s.structured)
        px = rc.to_sample(expr, mode="rec_pixels", with_mask=False)
        assert json.loads(px.answer) == [round(v) for v in expr.box]
        assert px.geometry.mask is None
    ids = [rc.to_sample(e, with_mask=False).id for e in refcoco().iter_expressions()]
    assert len(set(ids)) == len(ids)
    with pytest.raises(ValueError, match="mode must be one of"):
        rc.to_sample(next(refcoco().iter_expressions()), mode="box")
    with pytest.raises(TypeError, match="RefExpression"):
        rc.to_sample(next(refcoco().iter_refs()))


def test_refcoco_choice_validation():
    with pytest.raises(ValueError, match="dataset must be one of"):
        rc.RefCoco(REFER, "refclef")
    with pytest.raises(ValueError, match="split_by for refcoco must be one of"):
        rc.RefCoco(REFER, "refcoco", "umd")
    with pytest.raises(ValueError, match="split for refcocog"):
        rc.RefCoco(REFER, "refcocog", "umd", "testA")
    with pytest.raises(ValueError, match="give root"):
        rc.RefCoco(None, refs_path=REFS_JSON)


def test_refcocog_umd_layout(tmp_path):
    (tmp_path / "refcocog").mkdir()
    shutil.copy(INSTANCES, tmp_path / "refcocog" / "instances.json")
    refs = rc.load_refs(REFS_JSON)
    for r, split in zip(refs, ["train", "val", "test", "test", "train", "val"], strict=True):
        r["split"] = split
    rc.write_refs(refs, tmp_path / "refcocog" / "refs(umd).parquet")
    ds = rc.RefCoco(tmp_path, "refcocog", "umd", "test", image_dir=IMAGES)
    assert ds.refs_path.suffix == ".parquet"
    assert [r.ref_id for r in ds.iter_refs()] == [2, 3]
    assert rc.to_sample(next(ds.iter_expressions())).task == "refcocog"


# ---------------------------------------------------------------------------------------------
# RefCOCO: formats, conversion and the pickle


def _canon(refs) -> str:
    return json.dumps(refs, sort_keys=True)


def test_converter_round_trip(tmp_path):
    from_pickle = rc.load_refs(REFS_P, allow_pickle=True)
    with REFS_P.open("rb") as f:  # the fixture is plain data, so the stdlib reads it too
        assert _canon(from_pickle) == _canon(pickle.load(f))
    assert _canon(rc.load_refs(REFS_JSON)) == _canon(from_pickle)
    for suffix in (".json", ".parquet"):
        out = rc.convert_refs_pickle(REFS_P, tmp_path / f"refs(unc){suffix}")
        assert _canon(rc.load_refs(out)) == _canon(from_pickle)
    doc = json.loads((tmp_path / "refs(unc).json").read_text())
    assert doc["format"] == "refer-refs" and doc["source"] == "refs(unc).p"
    with pytest.raises(FileExistsError, match="overwrite"):
        rc.convert_refs_pickle(REFS_P, tmp_path / "refs(unc).json")
    rc.convert_refs_pickle(REFS_P, tmp_path / "refs(unc).json", overwrite=True)


def test_python2_pickle_converts_the_same(tmp_path):
    py2 = REFER / "py2" / "refs(unc).p"
    ops = {op.name for op, _, _ in pickletools.genops(py2.read_bytes())}
    assert "SHORT_BINSTRING" in ops and "BINUNICODE" not in ops  # really Python 2 style
    out = rc.convert_refs_pickle(py2, tmp_path / "refs.json")
    assert _canon(rc.load_refs(out)) == _canon(rc.load_refs(REFS_JSON))
    assert "café-coloured strip" in out.read_text(encoding="utf-8")


def test_cli_convert(tmp_path, capsys):
    """`lookhere data convert-refs`, the one command-line converter."""
    from lookhere.cli import main

    dst = tmp_path / "out.json"
    assert main(["data", "convert-refs", str(REFS_P), str(dst)]) == 0
    assert capsys.readouterr().out.strip() == str(dst)
    assert len(rc.load_refs(dst)) == 6
    src = tmp_path / "refs(unc).p"
    shutil.copy(REFS_P, src)
    main(["data", "convert-refs", str(src)])  # default destination: the .json beside it
    assert (tmp_path / "refs(unc).json").is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # exists: an error message, no traceback
        main(["data", "convert-refs", str(src)])
    assert stop.value.code == 2 and "overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["data", "convert-refs", str(FIX / "evil" / "os_system.p"), str(tmp_path / "e.json")])
    assert stop.value.code == 2
    assert "posix.system" in capsys.readouterr().err and not (tmp_path / "e.json").exists()


def test_pickle_needs_opt_in():
    with pytest.raises(rc.PickleNotAllowedError, match=r"(?s)pickle.*convert.*allow_pickle=True"):
        refcoco(refs_path=REFS_P)
    with pytest.raises(rc.PickleNotAllowedError, match=r"refs\(unc\)\.p"):
        rc.load_refs(REFS_P)
    ds = refcoco(refs_path=REFS_P, allow_pickle=True)
    assert ds.num_expressions == 10


def test_evil_fixtures_are_really_evil():
    """Without executing them: each holds an import, a call or a set."""
    for path in EVIL:
        ops = {op.name for op, _, _ in pickletools.genops(path.read_bytes())}
        assert ops & {"GLOBAL", "STACK_GLOBAL", "REDUCE", "EMPTY_SET"}, path.name
    assert len(EVIL) == 8


@pytest.mark.parametrize("path", EVIL, ids=[p.stem for p in EVIL])
def test_evil_pickle_refused_and_nothing_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the payloads would write their marker files
    src = tmp_path / path.name
    shutil.copy(path, src)
    with pytest.raises(safe_pickle.UnsafePickleError, match=r"plain data|allowed"):
        rc.convert_refs_pickle(src, tmp_path / "out.json")
    with pytest.raises(safe_pickle.UnsafePickleError, match=path.name):
        rc.load_refs(src, allow_pickle=True)
    with pytest.raises(safe_pickle.UnsafePickleError):
        refcoco(refs_path=src, allow_pickle=True)
    assert not list(tmp_path.glob("lookhere_evil_marker*")) and not Path("out.json").exists()
    assert not list(Path("/tmp").glob("lookhere_evil_marker*"))


@pytest.mark.parametrize("name,what", [
    ("os_system", "posix.system"), ("os_system_p0", "posix.system"),
    ("os_system_p4", "posix.system"), ("builtins_open", "io.open"),
    ("builtins_eval", "eval"), ("builtins_set", "set"), ("custom_class", "Gadget"),
])
def test_restricted_unpickler_alone_refuses_globals(name, what, tmp_path, monkeypatch):
    """The second guard, without the opcode scan: find_class refuses every global."""
    monkeypatch.chdir(tmp_path)
    data = (FIX / "evil" / f"{name}.p").read_bytes()
    with pytest.raises(safe_pickle.UnsafePickleError, match=f"refusing.*{what}"):
        safe_pickle.loads(data)  # the scan names the global it refuses
    import io

    with pytest.raises(safe_pickle.UnsafePickleError, match=f"refusing to load global .*{what}"):
        safe_pickle.RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    assert not list(tmp_path.glob("lookhere_evil_marker*"))


def test_set_opcode_refused_by_both_guards():
    data = (FIX / "evil" / "set_opcode.p").read_bytes()
    with pytest.raises(safe_pickle.UnsafePickleError, match="EMPTY_SET"):
        safe_pickle.loads(data)
    import io

    obj = safe_pickle.RestrictedUnpickler(io.BytesIO(data)).load()  # sets need no global...
    with pytest.raises(safe_pickle.UnsafePickleError, match="unexpected set"):
        safe_pickle.check_plain(obj)  # ...so the type check after loading catches them


def test_safe_pickle_accepts_plain_data_and_rejects_garbage():
    value = {"a": [1, 2.5, None, True, "x", b"y", (1, 2)], "b": {"c": -(10 ** 30)}}
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        if protocol < 3:  # bytes in protocol < 3 pickle as a call to _codecs.encode
            plain = {k: v for k, v in value.items() if k != "a"}
        else:
            plain = value
        assert safe_pickle.loads(pickle.dumps(plain, protocol=protocol)) == plain
    with pytest.raises(safe_pickle.UnsafePickleError, match="not a readable pickle"):
        safe_pickle.loads(b"\x80\x02]q\x00(K\x01")  # truncated
    with pytest.raises(FileNotFoundError, match="nope.p"):
        safe_pickle.load("nope.p")


def test_safe_pickle_limits_expansion_depth_and_cycles(monkeypatch):
    """Shared memo references (235 bytes standing for 10^10 values), a 200k-deep nesting and a
    list that contains itself are refused from the loaded structure, never expanded; shared
    data within the limits load, and the expanded count is exact (checked at the boundary)."""
    laughs = [0] * 10
    for _ in range(9):
        laughs = [laughs] * 10
    data = pickle.dumps(laughs, protocol=2)
    assert len(data) < 300
    with pytest.raises(safe_pickle.UnsafePickleError, match="expand to more than"):
        safe_pickle.loads(data)
    deep = b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b"."  # EMPTY_LIST x n, APPEND x n-1
    with pytest.raises(safe_pickle.UnsafePickleError, match="nest deeper than 100"):
        safe_pickle.loads(deep)
    selfish = b"\x80\x02]q\x00h\x00a."  # a list, memoised, appended to itself
    with pytest.raises(safe_pickle.UnsafePickleError, match="refer to themselves"):
        safe_pickle.loads(selfish)
    shared = [[1, 2, 3]] * 4  # 1 outer + 4 x (1 list + 3 ints) = 17 values when expanded
    blob = pickle.dumps(shared, protocol=2)
    monkeypatch.setattr(safe_pickle, "MAX_VALUES", 17)
    assert safe_pickle.loads(blob) == shared
    monkeypatch.setattr(safe_pickle, "MAX_VALUES", 16)
    with pytest.raises(safe_pickle.UnsafePickleError, match="more than 16 values"):
        safe_pickle.loads(blob)


# ---------------------------------------------------------------------------------------------
# RefCOCO: missing files and wrong schemas


def test_refcoco_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no refs\(unc\)"):
        rc.RefCoco(tmp_path, "refcoco", "unc")
    (tmp_path / "refcoco").mkdir()
    shutil.copy(REFS_JSON, tmp_path / "refcoco")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        rc.RefCoco(tmp_path, "refcoco", "unc")
    with pytest.raises(FileNotFoundError, match="instances.json"):
        rc.RefCoco(tmp_path, "refcoco", "unc", image_dir=IMAGES)
    with pytest.raises(FileNotFoundError, match="refs file not found: .*missing.json"):
        refcoco(refs_path=tmp_path / "missing.json")
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    ds = refcoco(image_dir=img_dir)
    with pytest.raises(FileNotFoundError, match="COCO_train2014_000000000101.png"):
        rc.to_sample(next(ds.iter_expressions()))
    with pytest.raises(FileNotFoundError, match="image\\(s\\) missing"):
        refcoco(image_dir=img_dir, check_images=True)


def test_refcoco_wrong_image_size(tmp_path):
    img_dir = tmp_path / "imgs"
    shutil.copytree(IMAGES, img_dir)
    Image.new("RGB", (10, 10)).save(img_dir / "COCO_train2014_000000000101.png")
    with pytest.raises(rc.RefCocoFormatError, match="10x10 but instances.json says 64x48"):
        rc.to_sample(next(refcoco(image_dir=img_dir).iter_expressions()))


def _broken_instances(tmp_path, edit) -> Path:
    inst = json.loads(INSTANCES.read_text())
    edit(inst)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(inst))
    return path


@pytest.mark.parametrize("edit,field", [
    (lambda d: d["annotations"][2].pop("bbox"), r"annotations\[2\] .*'bbox'"),
    (lambda d: d["images"][0].pop("width"), r"images\[0\] .*'width'"),
    (lambda d: d.pop("categories"), r"top level .*'categories'"),
])
def test_refcoco_instances_schema_errors(tmp_path, edit, field):
    path = _broken_instances(tmp_path, edit)
    with pytest.raises(rc.RefCocoFormatError, match=f"{tmp_path}.*{field}"):
        refcoco(instances_path=path)


def test_refcoco_dangling_annotation(tmp_path):
    path = _broken_instances(tmp_path, lambda d: d["annotations"].pop(0))
    with pytest.raises(rc.RefCocoFormatError, match="annotation 1001 not in .*instances.json"):
        refcoco(instances_path=path)


@pytest.mark.parametrize("edit,field", [
    (lambda refs: refs[3].pop("ann_id"), r"ref #3 .*'ann_id'"),
    (lambda refs: refs[1]["sentences"][0].pop("sent"), r"ref #1 sentence #0 .*'sent'"),
    (lambda refs: refs[0].update(sentences="x"), r"ref #0 field 'sentences'"),
])
def test_refcoco_refs_schema_errors(tmp_path, edit, field):
    refs = rc.load_refs(REFS_JSON)
    edit(refs)
    for suffix in (".json", ".p"):
        path = tmp_path / f"refs(unc){suffix}"
        if suffix == ".json":
            path.write_text(json.dumps(refs))
        else:
            path.write_bytes(pickle.dumps(refs, protocol=2))
        with pytest.raises(rc.RefCocoFormatError, match=f"refs\\(unc\\){suffix}.*{field}"):
            rc.load_refs(path, allow_pickle=True)
        with pytest.raises(rc.RefCocoFormatError):
            rc.convert_refs_pickle(path, tmp_path / "o.json") if suffix == ".p" else \
                refcoco(refs_path=path)


def test_refcoco_other_format_errors(tmp_path):
    pq.write_table(pa.table({"ref_id": [1]}), tmp_path / "r.parquet")
    with pytest.raises(rc.RefCocoFormatError, match=r"r.parquet.*column.*'ann_id'"):
        rc.load_refs(tmp_path / "r.parquet")
    (tmp_path / "r.json").write_text('{"refz": []}')
    with pytest.raises(rc.RefCocoFormatError, match=r"r.json.*'refs'"):
        rc.load_refs(tmp_path / "r.json")
    (tmp_path / "r.txt").write_text("[]")
    with pytest.raises(rc.RefCocoFormatError, match="unknown refs format"):
        rc.load_refs(tmp_path / "r.txt")
    with pytest.raises(rc.RefCocoFormatError, match="unknown segmentation"):
        rc.segmentation_to_mask("nope", 4, 4)
    with pytest.raises(rc.RefCocoFormatError, match="does not match the image size"):
        rc.segmentation_to_mask({"size": [3, 3], "counts": [9]}, 4, 4)


# ---------------------------------------------------------------------------------------------
# PixMo-Points


def pixmo(**kw) -> pp.PixmoPoints:
    kw.setdefault("image_map", PIXMO / "image_map.json")
    return pp.PixmoPoints(PIXMO / "data", PIXMO / "images", **kw)


def test_pixmo_schema_of_fixture_is_the_published_one():
    schema = pq.read_schema(PIXMO_PARQUET)
    assert schema.names == ["image_url", "image_sha256", "points", "count", "label",
                            "collection_method"]
    ptype = schema.field("points").type
    assert pa.types.is_list(ptype)
    assert ptype.value_type == pa.struct([("x", pa.float64()), ("y", pa.float64())])
    assert (schema.field("count").type, schema.field("label").type) == (pa.int64(), pa.string())


def test_pixmo_rows_and_missing_images():
    ds = pixmo()
    assert len(ds) == 6 and ds.n_missing == 1  # the dead-URL row is skipped
    assert [it.label for it in ds] == ["red dot", "blue dot", "green dot", "yellow dot", "cat",
                                       "edge marker"]
    assert ds[2].image_path.suffix == ".jpg" and ds[0].image_path.suffix == ""  # sha names
    assert ds[3].image_path.name == "photo_c.jpg"  # found through the URL map
    with pytest.raises(FileNotFoundError, match="dead.jpg"):
        pixmo(on_missing_image="error")
    no_map = pp.PixmoPoints(PIXMO_PARQUET, PIXMO / "images")
    assert len(no_map) == 5 and no_map.n_missing == 2


def test_pixmo_points_land_on_the_drawn_dots():
    dots = {label: (colour, size, centres) for _, size, _, d in MF.PIXMO_IMAGES
            for label, (colour, centres) in d.items()}
    for it in pixmo():
        if it.label not in dots:
            continue
        colour, size, centres = dots[it.label]
        assert it.image_size == size and it.count == len(it.points) == len(centres)
        img = np.asarray(it.load_image(), dtype=int)
        for (x, y), (cx, cy) in zip(it.points, centres, strict=True):
            assert (x, y) == pytest.approx((cx + 0.5, cy + 0.5), abs=1e-3)
            assert np.abs(img[int(y), int(x)] - colour).max() < 40
        w, h = size
        for (x, y), (rx, ry) in zip(it.points, it.points_raw, strict=True):
            assert (x, y) == pytest.approx((rx / 100 * w, ry / 100 * h))


def test_pixmo_units_filters_and_clipping():
    ds = pixmo()
    edge = ds[5]
    assert edge.points_raw == ((100.0, 50.0),) and edge.n_clipped == 1
    w, h = edge.image_size
    assert edge.points == ((w - 0.5, h / 2),)
    raw = pixmo(point_units="pixels")[0]  # percent values read as pixels: some fall outside
    w, h = raw.image_size
    assert raw.points == tuple((min(x, w - 0.5), min(y, h - 0.5)) for x, y in raw.points_raw)
    assert raw.n_clipped == sum(x >= w or y >= h for x, y in raw.points_raw) == 1
    counting = pixmo(collection_method="counting")
    assert {it.collection_method for it in counting} == {"counting"} and len(counting) == 1
    train, val = pixmo(split="train", val_fraction=0.5), pixmo(split="val", val_fraction=0.5)
    assert len(train) + len(val) == len(ds)
    assert not {it.image_sha256 for it in train} & {it.image_sha256 for it in val}
    assert len(pixmo(split="val", val_fraction=0.0)) == 0


def test_pixmo_to_sample():
    for it in pixmo():
        s = pp.to_sample(it)
        w, h = it.image_size
        want = sorted([round(x / w, 2), round(y / h, 2)] for x, y in it.points)
        assert json.loads(s.answer) == want and s.structured["points"] == want
        assert s.question == f"Point to all {it.label}." and s.task == "pixmo_points"
        assert s.geometry.points == list(it.points) and s.image.size == (w, h)
        assert all(0 <= x < w and 0 <= y < h for x, y in s.geometry.points)
        c = pp.to_sample(it, mode="count")
        assert c.answer == str(it.count) and c.question == f"How many {it.label} are there?"
        assert c.geometry.points == s.geometry.points
        json.dumps(s.meta), json.dumps(c.meta), json.dumps(s.structured)
    neg = pp.to_sample(pixmo()[4])
    assert neg.answer == "[]" and neg.geometry.is_empty()
    assert pp.to_sample(pixmo()[4], mode="count").answer == "0"
    with pytest.raises(ValueError, match="mode must be one of"):
        pp.to_sample(pixmo()[0], mode="box")


def test_pixmo_image_maps(tmp_path):
    by_sha = {it.image_sha256: it.image_path.name for it in pixmo()}
    csv_path = tmp_path / "map.csv"
    csv_path.write_text("".join(f"{k},{v}\n" for k, v in by_sha.items()))
    for image_map in (by_sha, csv_path):
        ds = pp.PixmoPoints(PIXMO_PARQUET, PIXMO / "images", image_map=image_map)
        assert len(ds) == 6
    absolute = {k: str(PIXMO / "images" / v) for k, v in by_sha.items()}
    assert len(pp.PixmoPoints(PIXMO_PARQUET, image_map=absolute)) == 6


def test_pixmo_verify_sha256(tmp_path):
    img_dir = tmp_path / "images"
    shutil.copytree(PIXMO / "images", img_dir)
    first = pixmo()[0].image_path.name
    (img_dir / first).write_bytes(b"corrupted")
    ds = pp.PixmoPoints(PIXMO_PARQUET, img_dir, image_map=PIXMO / "image_map.json",
                        verify_sha256=True)
    assert len(ds) == 2 and ds.n_missing == 5  # image a serves 4 rows, plus the dead URL
    with pytest.raises(FileNotFoundError, match="sha256 mismatch"):
        pp.PixmoPoints(PIXMO_PARQUET, img_dir, verify_sha256=True, on_missing_image="error")


def test_pixmo_missing_files_and_bad_args(tmp_path):
    with pytest.raises(FileNotFoundError, match="parquet file not found: .*nope.parquet"):
        pp.PixmoPoints(tmp_path / "nope.parquet", PIXMO / "images")
    with pytest.raises(FileNotFoundError, match="no .parquet files under"):
        pp.PixmoPoints(tmp_path, PIXMO / "images")
    with pytest.raises(FileNotFoundError, match="image folder not found: .*imgz"):
        pp.PixmoPoints(PIXMO_PARQUET, tmp_path / "imgz")
    with pytest.raises(FileNotFoundError, match="image map not found"):
        pp.PixmoPoints(PIXMO_PARQUET, image_map=tmp_path / "m.json")
    with pytest.raises(ValueError, match="give image_dir, image_map or both"):
        pp.PixmoPoints(PIXMO_PARQUET)
    for kw, msg in [({"point_units": "px"}, "point_units"), ({"split": "test"}, "split"),
                    ({"val_fraction": 2.0}, "val_fraction"),
                    ({"on_missing_image": "warn"}, "on_missing_image"),
                    ({"collection_method": "x"}, "collection_method")]:
        with pytest.raises(ValueError, match=msg):
            pixmo(**kw)


def test_pixmo_schema_errors(tmp_path):
    table = pq.read_table(PIXMO_PARQUET)
    bad = tmp_path / "no_points.parquet"
    pq.write_table(table.drop_columns(["points", "count"]), bad)
    with pytest.raises(pp.PixmoFormatError, match=r"no_points.parquet.*\['points', 'count'\]"):
        pp.PixmoPoints(bad, PIXMO / "images")
    flat = tmp_path / "flat_points.parquet"
    pq.write_table(table.set_column(2, "points", pa.array([[1.0]] * len(table))), flat)
    with pytest.raises(pp.PixmoFormatError, match=r"flat_points.parquet.*list<struct<x, y>>"):
        pp.PixmoPoints(flat, PIXMO / "images")
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(pp.PixmoFormatError, match="junk.parquet: not a readable parquet"):
        pp.PixmoPoints(junk, PIXMO / "images")
    no_method = tmp_path / "no_method.parquet"  # optional column: defaults to ""
    pq.write_table(table.drop_columns(["collection_method"]), no_method)
    ds = pp.PixmoPoints(no_method, PIXMO / "images", image_map=PIXMO / "image_map.json")
    assert len(ds) == 6 and ds[0].collection_method == ""

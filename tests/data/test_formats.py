"""Answer formats: native rendering, tolerant parsing, and a failure rate instead of crashes;
answers are read where a person reads them, not found in token soup."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lookhere.data.formats import (
    ParseStats,
    parse_box,
    parse_grid_cell,
    parse_number,
    parse_points,
    parse_word,
    parse_yes_no,
    reads_as_answer,
    render_box,
    render_grid_cell,
    render_point,
)


def test_llava_box_is_relative_to_the_padded_square():
    # 200x100 image: padded to 200x200 with 50 px on top
    assert render_box((0, 0, 200, 100), (200, 100), "llava") == "[0.00, 0.25, 1.00, 0.75]"
    assert render_box((0, 0, 200, 100), (200, 100), "llava", square=False) == \
        "[0.00, 0.00, 1.00, 1.00]"
    box = parse_box("The box is [0.00, 0.25, 1.00, 0.75].", (200, 100), "llava")
    assert box == pytest.approx((0, 0, 200, 100))


def test_qwen_json_in_the_resized_frame():
    text = render_box((10, 20, 110, 60), (200, 100), "qwen", label="cat", frame=(400, 200))
    assert text == '{"bbox_2d": [20, 40, 220, 120], "label": "cat"}'
    assert parse_box(f"```json\n[{text}]\n```", (200, 100), "qwen", frame=(400, 200)) == \
        pytest.approx((10, 20, 110, 60))
    pt = render_point((50, 25), (200, 100), "qwen")
    assert parse_points(pt, (200, 100), "qwen") == [(50, 25)]


def test_plain_round_trip_and_points():
    box = (12.0, 30.0, 80.0, 90.0)
    text = render_box(box, (100, 100))
    assert parse_box(text, (100, 100)) == pytest.approx(box, abs=0.5)
    assert parse_points(render_point((50, 20), (100, 100)), (100, 100)) == \
        [pytest.approx((50, 20))]


def test_small_answers():
    assert render_grid_cell(3, 5) == "row 3, column 5"
    assert parse_grid_cell("It is in Row 3, Column 5.") == (3, 5)
    assert parse_grid_cell("(4, 2)") == (4, 2)
    assert parse_yes_no("No, they do not.") is False and parse_yes_no("maybe") is None
    assert parse_number("It ends at 7") == 7 and parse_number("none") is None
    assert parse_word("a RED star", ["blue", "red"]) == "red"
    glyphs = list("ABCDEFGH12345678")
    assert parse_word("It is a B", glyphs) == "A"  # case-insensitive: the article is a letter
    assert parse_word("It is a B", glyphs, ignore_case=False) == "B"
    assert parse_word("b", glyphs, ignore_case=False) is None


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parsers_never_crash(text):
    stats = ParseStats()
    for style in ("llava", "qwen", "plain", "pixels"):
        stats.add(parse_box(text, (64, 48), style))
        stats.add(parse_points(text, (64, 48), style))
    parse_grid_cell(text), parse_yes_no(text), parse_number(text)
    assert 0 <= stats.failure_rate <= 1 and stats.total == 8


# The box-to-text functions that `render_box` replaced, verbatim: its text must stay the same
# byte for byte (the synthetic tasks' answers and captions, RefCOCO's answers).
def _old_shapes_box_text(box, width, height):
    x0, y0, x1, y1 = box
    return f"[{x0 / width:.2f}, {y0 / height:.2f}, {x1 / width:.2f}, {y1 / height:.2f}]"


def _old_refcoco_format_box(box, size, mode="rec"):
    if mode == "rec":
        w, h = size
        vals = [round(min(max(v / s, 0.0), 1.0), 2) for v, s in zip(box, (w, h, w, h), strict=True)]
        return "[" + ", ".join(f"{v:.2f}" for v in vals) + "]", vals
    vals = [float(round(v)) for v in box]
    return "[" + ", ".join(str(int(v)) for v in vals) + "]", vals


# -0.0 aside (no box has it: the old code wrote "-0.00", render_box "0.00")
_coord = st.floats(-80, 800, allow_nan=False).filter(lambda v: v != 0 or str(v) == "0.0")


@settings(max_examples=500, deadline=None)
@given(st.tuples(_coord, _coord, _coord, _coord), st.integers(1, 700), st.integers(1, 700),
       st.tuples(*[st.integers(0, 700)] * 4))
def test_render_box_is_the_old_box_texts(box, w, h, int_box):
    from lookhere.data.refcoco import format_box

    for b in (box, int_box):
        assert render_box(b, (w, h)) == _old_shapes_box_text(b, w, h)
        for mode in ("rec", "rec_pixels"):
            text, vals = format_box(b, (w, h), mode)
            old_text, old_vals = _old_refcoco_format_box(b, (w, h), mode)
            assert text == old_text and vals == old_vals
            assert [repr(v) for v in vals] == [repr(v) for v in old_vals]


def test_pixels_style_round_trip():
    assert render_box((10.4, 20.5, 110.6, 60), (200, 100), "pixels") == "[10, 20, 111, 60]"
    assert parse_box("[10, 20, 111, 60]", (200, 100), "pixels") == (10, 20, 111, 60)
    assert render_point((3.6, 7.2), (200, 100), "pixels") == "[4, 7]"
    assert parse_points("[4, 7]", (200, 100), "pixels") == [(4, 7)]
    assert render_box((-5, 10, 250, 90), (200, 100), clip=True) == "[0.00, 0.10, 1.00, 0.90]"


# Replies as real models write them: the answer first, or after one plain sentence.
REAL_REPLIES = [
    (parse_yes_no, ["Yes", "No.", "Yes, the two lines intersect.", "No, they don't cross.",
                    "The answer is yes.", "**Yes**", "Answer:\nno"]),
    (parse_number, ["7", "The line ends at number 7.", "It ends at 12"]),
    (parse_grid_cell, ["Row 3, column 5", "The highlighted patch is in row 3, column 5.",
                       "(2, 4)"]),
    (lambda t: parse_word(t, ["red", "blue"]), ["red", "The square is red.", "It's Red!",
                                                "The colour of the small square is blue."]),
    (lambda t: parse_box(t, (200, 100)), [
        "[0.12, 0.34, 0.56, 0.78]", "The red circle is at [0.12, 0.34, 0.56, 0.78].",
        "Sure! [0.1, 0.2, 0.3, 0.4]", "[0.1 0.2 0.3 0.4]",
        "The black cat on the left side of the image is located at [0.1, 0.2, 0.3, 0.4]"]),
    (lambda t: parse_box(t, (200, 100), "qwen"), [
        '```json\n[\n\t{"bbox_2d": [64, 96, 120, 99], "label": "dog"}\n]\n```',
        '{"label": "cat", "bbox_2d": [1, 2, 3, 4]}']),
    (lambda t: parse_points(t, (200, 100)), ["[0.26, 0.23]", "[[0.25, 0.50], [0.75, 0.50]]",
                                             "The brown square is at [0.26, 0.23]."]),
]

# Token soup, as random tiny models write it (the first four cut from their replies), where the
# parsers before the rule found an answer and a person finds none.
SOUP = [
    (parse_number, "Hۂ�cyNourant 6��redbox��redbox"),  # lead-in of symbols
    (parse_number, "18 12Q Stracing�\x1a�\x1a�"),  # U+FFFD and controls right after it
    (parse_number, "oss 2\x0foss 2\x0foss 2"),  # a control character after it
    (parse_number, "16ell 16ell 16ell"),  # glued to letters
    (parse_yes_no, "ۂcyN\t��redbox no"),
    (lambda t: parse_box(t, (200, 100)), "[a1, b2, c3, d4]"),  # numbers inside words
    (lambda t: parse_word(t, ["red"]), "7 apples, and red"),  # a digit before it
    (lambda t: parse_word(t, ["red"]), " ".join(["word"] * 17) + " red"),  # a paragraph first
]


def test_answers_are_read_where_a_person_reads_them():
    for parse, replies in REAL_REPLIES:
        for text in replies:
            assert parse(text) is not None, text
    for parse, text in SOUP:
        assert parse(text) is None, text
    # the bounds of the rule: 16 plain words may lead, and legibility ends 20 characters past it
    assert parse_word(" ".join(["word"] * 16) + " red", ["red"]) == "red"
    assert parse_number("It ends at 7." + " " * 18 + "\ufffd") is None  # the 20th after 7
    assert parse_number("It ends at 7." + " " * 19 + "\ufffd") == 7
    assert reads_as_answer("row 3", 0, 5) and not reads_as_answer("arrow 3", 2, 7)


def test_parsing_is_linear_in_the_reply():
    """A long reply (a run of digits, words, brackets) parses in milliseconds: no regular
    expression backtracks quadratically."""
    import time

    for text in ["[" + "1" * 50_000 + "x]", "a " * 50_000 + "3", "(" + "1," * 20_000]:
        start = time.perf_counter()
        parse_box(text, (64, 48)), parse_points(text, (64, 48)), parse_number(text)
        parse_grid_cell(text), parse_yes_no(text), parse_word(text, ["red"])
        assert time.perf_counter() - start < 0.5, text[:20]

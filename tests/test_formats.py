"""Answer formats: native rendering, tolerant parsing, and a failure rate instead of crashes."""

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


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parsers_never_crash(text):
    stats = ParseStats()
    for style in ("llava", "qwen", "plain"):
        stats.add(parse_box(text, (64, 48), style))
        stats.add(parse_points(text, (64, 48), style))
    parse_grid_cell(text), parse_yes_no(text), parse_number(text)
    assert 0 <= stats.failure_rate <= 1 and stats.total == 6

"""Table cells: the one percentage formatter, both rounding rules."""

from lookhere.tables import pct, points


def test_pct_rounding_rules_and_missing_values():
    assert pct(0.3125) == "31.2"  # the float's own rounding (half to even on 31.25)
    assert pct(0.3125, half_up=True) == "31.3"  # the way a person rounds
    assert pct(1) == "100.0" and pct(0.0, half_up=True) == "0.0"
    assert pct(None) == pct(float("nan")) == pct(float("inf"), half_up=True) == "-"
    assert pct(None, missing="n/a") == "n/a" and pct(0.25, missing="n/a") == "25.0"
    assert points(0.5, 0.4125) == "+8.8" and points(0.3, 0.315) == "-1.5"
    assert points(0.3, 0.3) == "0.0"

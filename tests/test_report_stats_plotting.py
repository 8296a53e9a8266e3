import math

import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest

from noisefit_lib import plotting, report, stats, verdicts


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [
        (3.14159265, 4, 3.142),
        (123456.0, 3, 123000.0),
        (-0.000123456, 2, -0.00012),
        (0.0, 4, 0.0),
        (math.inf, 4, math.inf),
    ],
)
def test_sig(value, digits, expected):
    assert report.sig(value, digits) == expected


def test_sig_rejects_zero_digits():
    with pytest.raises(ValueError):
        report.sig(1.0, 0)


def test_fmt():
    assert report.fmt(2.0) == "2" and report.fmt(0.123456) == "0.1235" and report.fmt("x") == "x"
    assert report.fmt(True) == "True" and report.fmt(7) == "7"
    assert report.fmt(3274.9, digits=3) == "3270" and report.fmt(1.5e-7) == "1.5e-07"


def test_table():
    text = report.table([{"method": "sft", "acc (%)": 91.23456}, {"method": "nf", "acc (%)": 90.0}])
    assert text.splitlines() == [
        "| method | acc (%) |",
        "|---|---|",
        "| sft | 91.23 |",
        "| nf | 90 |",
    ]
    with pytest.raises(ValueError):
        report.table([])
    with pytest.raises(KeyError):
        report.table([{"a": 1}, {"b": 2}])


def test_glue_without_myst_prints(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_myst(name, *args, **kwargs):
        if name == "myst_nb":
            raise ImportError
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_myst)
    assert report.glue("speedup", 1.23456) == 1.235
    assert report.glue("verdict", "reproduced") == "reproduced"
    assert report.glue_all({"a": 0.123456, "n": 3}) == {"a": 0.1235, "n": 3}
    assert capsys.readouterr().out == "speedup = 1.235\nverdict = reproduced\na = 0.1235\nn = 3\n"


def test_glue_refuses_a_verdict_outside_the_vocabulary():
    with pytest.raises(ValueError, match="names a verdict but 'direction only' is not one"):
        report.glue("claim1_verdict", "direction only")
    with pytest.raises(ValueError, match="names a verdict"):
        report.glue("verdict_full", 0.5)
    assert report.glue("claim1_verdict", "not tested (ceiling)") == "not tested (ceiling)"


def test_glue_an_estimate_as_its_text():
    effect = stats.Estimate(0.0213, -0.1549, 0.1971, 3)
    assert report.glue("effect", effect) == "+0.0213 [-0.155, +0.197]"


def test_table_of_a_dataframe():
    frame = pd.DataFrame({"method": ["sft"], "acc": [np.float64(0.123456)], "n": [np.int64(3)]})
    assert report.table(frame).splitlines()[-1] == "| sft | 0.1235 | 3 |"


def test_glue_keeps_counts_as_integers():
    import numpy as np

    assert report.glue("people", 160) == 160 and isinstance(report.glue("people", 160), int)
    assert report.glue("seeds", np.int64(5)) == 5 and isinstance(
        report.glue("seeds", np.int64(5)), int
    )
    assert report.glue("big", 123456) == 123456  # not rounded to 4 digits
    assert report.glue("rate", 1.0) == 1.0 and isinstance(report.glue("rate", 1.0), float)


def test_house_style_is_explicit_and_restorable():
    before = mpl.rcParams["axes.spines.top"]
    with plotting.house_style():
        assert mpl.rcParams["axes.spines.top"] is False
        assert mpl.rcParams["figure.figsize"] == [6.4, 3.6]
    assert mpl.rcParams["axes.spines.top"] == before


def test_method_styles_are_fixed_and_distinct():
    assert plotting.method_style("sft")["color"] == "#000000"
    assert plotting.method_style("noisefit")["linestyle"] == "--"
    styles = {(s["color"], str(s["linestyle"])) for s in plotting.METHOD_STYLE.values()}
    assert len(styles) == len(plotting.METHOD_STYLE)
    with pytest.raises(ValueError, match="known: sft"):
        plotting.method_style("sgd")
    assert plotting.style(7) == plotting.style(0)


def test_full_column_and_carried_values():
    book = {"x_gain": "+0.1 [0.0, 0.2]", "x_gain_verdict": verdicts.INCONCLUSIVE}
    keys = ["gain", "gain_verdict"]
    absent = report.full_column(None, keys, "x_full")
    assert absent["x_full_gain"] == "not run"
    assert absent["x_full_gain_verdict"].startswith("not tested")
    said = report.carried(book, None, keys, book_prefix="x", full_prefix="x_full", to="x_said")
    assert said == {
        "x_said_gain": book["x_gain"],
        "x_said_gain_verdict": book["x_gain_verdict"],
        "x_said_run": "`book`",
    }
    full = {"x_full_gain": "+0.3 [0.2, 0.4]", "x_full_gain_verdict": verdicts.REPRODUCED}
    assert report.full_column(full, keys, "x_full") == full
    said = report.carried(book, full, keys, book_prefix="x", full_prefix="x_full", to="x_said")
    assert said["x_said_gain_verdict"] == verdicts.REPRODUCED and said["x_said_run"] == "`full`"


def test_a_cell_ending_with_glue_all_displays_nothing():
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    shell = InteractiveShell.instance()
    with capture_output() as shown:
        shell.run_cell("from noisefit_lib import report\nreport.glue_all({'k': 1.0})")

    def dicts(shown):
        texts = [o.data.get("text/plain", "") for o in shown.outputs] + [shown.stdout]
        return [t for t in texts if "{'k'" in t]

    assert dicts(shown) == []  # the glue record itself may be displayed, the dict is not
    with capture_output() as shown:
        shell.run_cell("{'k': 1.0}")  # the control: a plain dict is displayed
    assert dicts(shown)

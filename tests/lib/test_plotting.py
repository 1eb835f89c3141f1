"""mambabook.plotting: one colour per provider, log-log scaling plots with fitted slopes."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from mambabook.bench import Record  # noqa: E402
from mambabook.plotting import color_for, plot_scaling, records_table  # noqa: E402


def test_color_is_stable_per_provider():
    assert color_for("sequential") == color_for("sequential")
    assert color_for("sdpa_causal_bf16") == color_for("sdpa")  # by keyword
    assert color_for("hillis_steele").startswith("#")


def test_plot_scaling_reports_slopes_and_marks_oom():
    recs = [Record("s", "quad", {"L": L}, ms=float(L * L)) for L in (2, 4, 8)]
    recs += [Record("s", "lin", {"L": L}, ms=float(L)) for L in (2, 4, 8)]
    recs.append(Record("s", "quad", {"L": 16}, status="oom"))
    fig, ax = plt.subplots()
    slopes = plot_scaling(ax, recs, "L")
    assert slopes["quad"] == pytest.approx(2.0)
    assert slopes["lin"] == pytest.approx(1.0)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("slope 2.00" in t for t in labels)
    plt.close(fig)


def test_plot_scaling_leaves_out_the_slope_of_a_single_point():
    recs = [Record("s", "one", {"L": 4}, ms=1.0), Record("s", "two", {"L": 2}, ms=1.0),
            Record("s", "two", {"L": 4}, ms=2.0)]
    fig, ax = plt.subplots()
    plot_scaling(ax, recs, "L")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["one", "two (slope 1.00)"]
    plt.close(fig)


def test_records_table_has_a_row_per_size_and_a_column_per_provider_and_field():
    recs = [Record("s", "a", {"L": 2}, ms=1.5, peak_bytes=2**21),
            Record("s", "b", {"L": 2}, status="oom"),
            Record("s", "a", {"L": 4}, ms=3.0, peak_bytes=2**22)]
    lines = records_table(recs, "L", fields=("ms", "peak_bytes")).data.splitlines()
    assert lines[0] == "| L | a (ms) | b (ms) | a (MiB) | b (MiB) |"
    assert lines[2] == "| 2 | 1.5 | oom | 2 | oom |"
    assert lines[3] == "| 4 | 3 |  | 4 |  |"
    with pytest.raises(ValueError, match="fields"):
        records_table(recs, "L", fields=("bytes",))


def test_ratio_map_draws_the_level_contour_only_where_it_is_crossed():
    from mambabook.plotting import plot_ratio_map

    fig, ax = plt.subplots()
    ratio = [[1.0, 2.0, 4.0], [2.0, 6.0, 12.0]]  # 5 lies between cells
    lines = plot_ratio_map(ax, ratio, [1, 8], [512, 1024, 2048], level=5.0,
                           hatched=[[False] * 3, [False, False, True]])
    assert lines is not None and list(lines.levels) == [5.0]
    assert [t.get_text() for t in ax.texts][:6] == ["1.0", "2.0", "4.0", "2.0", "6.0", "12.0"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["512", "1K", "2K"]
    assert sum(p.get_hatch() == "//" for p in ax.patches) == 1
    assert plot_ratio_map(ax, [[1.0, 2.0]], [1], [512, 1024], level=5.0) is None
    with pytest.raises(ValueError, match=r"ratio must have shape .*\(2, 3\), got \(2, 2\)"):
        plot_ratio_map(ax, [[1.0, 2.0], [3.0, 4.0]], [1, 8], [512, 1024, 2048])
    plt.close(fig)


def test_ratio_map_leaves_missing_cells_blank_with_their_labels():
    from mambabook.plotting import plot_ratio_map

    fig, ax = plt.subplots()
    nan = float("nan")
    ratio = [[2.0, 7.0], [3.0, nan]]  # the last cell: no measurement
    lines = plot_ratio_map(ax, ratio, [1, 8], [512, 1024], level=5.0,
                           labels=[["", ""], ["", "oom"]])
    assert lines is not None
    assert [t.get_text() for t in ax.texts][:4] == ["2.0", "7.0", "3.0", "oom"]
    assert plot_ratio_map(ax, [[nan, nan]], [1], [512, 1024]) is None  # nothing to contour
    plt.close(fig)

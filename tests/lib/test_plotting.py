"""mambabook.plotting: one colour per provider, log-log scaling plots with fitted slopes."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from mambabook.bench import Record  # noqa: E402
from mambabook.plotting import color_for, plot_scaling  # noqa: E402


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

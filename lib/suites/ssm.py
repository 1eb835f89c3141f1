"""Suites for chapters 4-5: the SSM's recurrent vs convolution view, and the price of selection.

Run: python -m mambabook.bench --suite ssm_views (or selection_price).
"""

from mambabook.bench import suite
from mambabook.selective import selection_price_suite
from mambabook.ssm import views_suite

suite("ssm_views")(views_suite)
suite("selection_price")(selection_price_suite)

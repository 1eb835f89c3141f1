"""Named benchmark suites for `python -m mambabook.bench --suite NAME`.

One module per family (memory, attention, scan, generation, ...); each registers its
suites with `@mambabook.bench.suite(name)` as fn(quick, device) -> list[Record].
"""

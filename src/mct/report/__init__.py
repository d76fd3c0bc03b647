"""results/report.html from the records the stages write (mct.records): one jinja2 template,
one module per section (mct.report.sections), matplotlib/seaborn figures.

``build_report(raw_config, ctx, out=None)`` (in :mod:`mct.report.build`) renders it;
:mod:`mct.report.browser` opens a rendered report in headless Chromium through Playwright,
checks it and takes a screenshot."""

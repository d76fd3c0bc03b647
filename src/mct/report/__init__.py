"""results/report.html: pandas tables, seaborn figures, one jinja2 template.

``build_report(raw_config, ctx, out=None)`` (in :mod:`mct.report.build`) renders it from
whatever results exist; :mod:`mct.report.browser` opens a rendered report in headless
Chromium, checks it and takes a screenshot."""

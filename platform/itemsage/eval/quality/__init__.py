"""The headline quality tables and chart of docs/quality.md, rebuilt from evaluation runs in MLflow
(``experiments/quality_report.py``): ``runs`` reads and groups the evaluation runs, ``labels``
names their methods and rows, ``markdown`` renders a group's table, ``chart`` draws the bar chart,
``report`` writes both into the document."""

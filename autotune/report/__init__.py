"""What a study leaves for people to read: the table and CSVs (``table``), ``report.html`` (``html``,
``figures``, ``images``), optuna-dashboard's notes (``dashboard``) and, on request, a rendered grid
(``grid``: the one part that loads the model).
"""

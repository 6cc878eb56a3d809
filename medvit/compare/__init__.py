"""`medvit compare`: several runs scored on the same held-out images -> paired statistics,
calibration, subgroups, where they disagree, cost -> one HTML page + compare.json.

Rooms: stats.py (DeLong, paired bootstrap, McNemar, Holm, Wilson), calibration.py (reliability,
Brier, ECE), runs.py (loading runs, refusing mismatched ones, scoring them on one split),
report.py (assembling the numbers and figures, writing the page).
"""

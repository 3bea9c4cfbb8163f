"""After training, looking at results: `analysis` (`main.py --mode=evaluate`:
the per-run report), `plots` and `pages` (its figures and markdown/HTML),
`compare` (a table across workdirs) and `results_table` (results/*.json, the
shipped weights and the README's experiment table)."""

"""Reports: every table, section and page of lookhere's results (`page`: the KLAL results table,
its figures and the HTML page; `sections`: the demo's heads and lens sections; `tables`: the
command-line tables; `demo`: ``make demo``, which runs the experiments and writes the report)."""

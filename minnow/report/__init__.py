"""The report stage: cost arithmetic over report.json and report.md rendering."""

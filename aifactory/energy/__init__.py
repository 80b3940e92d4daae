"""Energy, CO2e and water per tenant: attribution (attribution.py), its inputs on a running site
(sources.py) and the site's energy report (report.py, `aifactory energy report`)."""

"""What the operator sees: overlays, triptychs, regions, the HTML triage page, the CSV and sorted folders."""

"""``edge report``: a coil map (PNG) and a self-contained HTML page from the defect store."""

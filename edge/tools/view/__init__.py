"""``edge view``: a live operator view in the browser (the last strips with their defects, the coil map, counts)."""

"""``haloscope search``: score unlabelled cutouts, rank them, hand out a candidate list."""

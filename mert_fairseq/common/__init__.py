"""Small pieces every part of mert-fairseq uses: atomic file writes, parsing of list-valued config strings,
and the location of the shipped recipes (hydra configs)."""

"""The pure-Python twin's files that pair with the compiled fast path's includes of the same
names (fastpath/<name>.pxi <-> fastpath/twin/<name>.py), routine for routine."""

"""Test and benchmark tooling that ships with the station, kept apart from the drivers it exercises.

`plc_sim`: a simulated PLC on 127.0.0.1 (or behind a serial pty) from pymodbus's own server, which
timestamps every write (the tests, `station demo`, `station bench --actuator ... --simulate`).
`serial_pty`: a socat pty pair and a relay board's end of a serial line. `pulse_bench`: the pulse
timing benchmark of one actuator through the station's own scheduler and output worker. Nothing in
the running station imports this package.
"""

"""The operator web HMI: `station hmi -c FILE`, a process of its own beside the station.

It reads the trace log read-only, gets live state from the station over its unix socket
(`station.control`), keeps QA reviews in its own SQLite file, computes Grad-CAM heat maps on demand
and serves Prometheus metrics. Pages: live, review, search, trends, settings (engineer), users
(admin). Modules: `server` (the FastAPI app), `routes_*` (pages), `live` (station channel and
server-sent events), `tracedb` (read-only trace-log queries), `reviews`, `users`, `security`,
`metrics`, `heatmaps`, `settings_edit`, `charts`, `explain`.
"""

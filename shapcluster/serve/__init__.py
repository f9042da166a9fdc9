"""`shapcluster serve`: the explanation service (app/serve.py) on Ray Serve, on a cluster or on
a local Ray head.

- ``dashboard``: HTTP to the Ray dashboard's Serve REST API and to the served application;
- ``service``: deploy (and wait), status, remove, through those endpoints;
- ``local_head``: the Ray head on this machine that `serve up --local` starts;
- ``lifecycle``: up / status / down on a cluster (token, tunnels, synced paths) or locally.
"""

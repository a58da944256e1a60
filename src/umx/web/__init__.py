"""`umx serve`: a local web page to separate songs, listen to the stems, remix and download them.

Its modules, one job each:

- :mod:`umx.web.jobs`: the job store on disk (the manifest of `umx.jobs`, and one folder per
  input and options, named by their SHA-256), the bounded queue, the listeners, the cache limit
  and the worker threads that run `umx.jobs.run_task`.
- :mod:`umx.web.records`: a job's record (a line of the manifest), its id, and its names on the
  page.
- :mod:`umx.web.storage`: the data directory's files: checked writable at start, folder sizes,
  removals a crash cannot leave half done.
- :mod:`umx.web.uploads`: uploads written to disk as they arrive, within the size limit.
- :mod:`umx.web.downloads`: a finished job's stems in other formats, zip files and mixes.
- :mod:`umx.web.server`: the Starlette application, its HTTP routes and the server-sent events.
- :mod:`umx.web.guard`: the middleware in front of every route: this server's own host names
  only, no request from another site's page, the security headers on every response.
- :mod:`umx.web.run`: `ServeOptions`, checked when built, and `serve`, the run (uvicorn on a
  bound socket).
- :mod:`umx.web.options`: the command line of `umx serve`, parsed into `ServeOptions`.
- ``static/``: the page (HTML, CSS and JavaScript, no build step, nothing fetched from elsewhere).

Only :mod:`umx.web.server`, :mod:`umx.web.guard` and :mod:`umx.web.run` import the `web`
extra (starlette, uvicorn), and only when `umx serve` runs, so the core install never needs
them.
"""

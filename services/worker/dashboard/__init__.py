"""The operator and analyst dashboard: a browser page served by the worker, fed by its JSON API.

- ``routes``: the page and its static files (public: they hold no data), the views' JSON
  (``dashboard``: admins, developers, analysts) and the deployment actions (``deploy-ramp``: admins);
- ``cache``: the last computed value of each view, recomputed in the background, so a page never
  waits for a report over millions of responses;
- ``views``: the experiment and shadow views, built on the report the report API serves;
- ``overview``, ``series``, ``records``: the other views' data, as plain functions of the store,
  the registry and the deployment;
- ``actions``: promote, roll back and ramp steps through the gateway's admin API with the admin's
  own key, the path the CLI takes, so the audit trail is the same;
- ``static/``: the page (plain JavaScript and inline SVG charts; no library, nothing from a CDN).
"""

"""Hostile token strings: markup, script breakers, entities, bidi marks, long and empty tokens."""

HOSTILE_TOKENS = [
    "<script>window.__pwned=1</script>",
    "</script><script>window.__pwned=2</script>",
    "</SCRIPT >",
    '<img src=x onerror="window.__pwned=3">',
    "<svg onload=window.__pwned=4>",
    '"><b onmouseover="window.__pwned=5">hover</b>',
    "' onfocus='window.__pwned=6' autofocus='",
    "javascript:window.__pwned=7",
    "<iframe srcdoc='<script>parent.__pwned=8</script>'>",
    "&lt;b&gt;not bold&lt;/b&gt;",
    "&amp;&#x3C;&#60;",
    "<!--",
    "-->",
    "<![CDATA[x]]>",
    "\u202eevil\u202c",
    "\u200f\u200e\u2066rtl\u2069",
    "\u2028\u2029",
    "",
    " ",
    "\n",
    "\t",
    "x" * 400,
    "{{constructor.constructor('window.__pwned=9')()}}",
    "${window.__pwned=10}",
    "\\u003cscript\\u003e",
    "<style>*{display:none}</style>",
    "\U0001f600 emoji \u0645\u0631\u062d\u0628\u0627",
    "\ud800 lone surrogate",
    "\x00nul",
]


def shown(token: str) -> str:
    """What a page shows for ``token``: lone surrogates (unencodable) become U+FFFD."""
    from circuitboard.widgets._validate import displayable

    return displayable(token)

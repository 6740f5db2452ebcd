"""Models of your own: Ollama's Modelfile, `slmrun create`, the created-model manifest.

    modelfile.py   parse(text) -> Modelfile (Ollama's syntax and meaning, errors with the line);
                   Modelfile.to_text() writes it back (pure)
    parameters.py  PARAMETER names, types, ranges, and what each becomes in slmrun (pure)
    gotemplate.py  the subset of Go's text/template that Ollama's chat templates use (pure)
    templates.py   TEMPLATE -> a named prompt format, recognised by rendering samples (pure)
    manifest.py    the created model in the store: a small JSON manifest naming its base
    resolve.py     a created model's chain of FROMs -> its base and the merged settings
    messages.py    a chat with the model's SYSTEM and MESSAGE turns placed first (pure)

A created model never copies its base file; api.resolve/api.load follow its FROM chain.
"""

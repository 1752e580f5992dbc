"""BUILD-144, owned by revision 0002: every token counted. The plan and the rule are shared; what each engine does
is its strategy in ``engines`` (``sqlite``, ``postgresql``, ``mariadb``). Importing it registers its sentences in the
catalogue (``messages``)."""

from autopack.migrations.build144 import messages  # noqa: F401

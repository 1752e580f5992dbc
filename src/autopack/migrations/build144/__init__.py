"""BUILD-144, owned by revision 0002: every token counted. The plan and the rule are shared; what each engine does
is its strategy in ``engines`` (``sqlite``, ``postgresql``, ``mariadb``)."""

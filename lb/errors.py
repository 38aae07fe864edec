"""The one error type of the control side: it names the field that is wrong."""


class LBError(Exception):
    """A bad config value, command argument or request. Nothing was changed when it is raised."""

    def __init__(self, field, message):
        super().__init__("%s: %s" % (field, message))
        self.field = field
        self.message = message

    def as_dict(self):
        return {"field": self.field, "message": self.message}

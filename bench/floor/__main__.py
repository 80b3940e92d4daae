"""As many components and dynamic resources as the site stack has, with providers that do nothing."""

import pulumi
import pulumi.dynamic as dynamic

from infra.redfish import pickler_restored  # the same SDK workaround as the site's machines


class Noop(dynamic.ResourceProvider):
    def create(self, props):
        return dynamic.CreateResult(id_=props["name"], outs=props)

    def diff(self, id_, olds, news):
        return dynamic.DiffResult(changes=False)


class Bmc(dynamic.Resource):  # the SDK wants a subclass per dynamic resource type
    def __init__(self, name, opts):
        with pickler_restored():
            super().__init__(Noop(), name, {"name": name}, opts)


class Machine(pulumi.ComponentResource):
    def __init__(self, name, opts=None):
        super().__init__("bench:floor:Machine", name, None, opts)
        Bmc(f"{name}-bmc", pulumi.ResourceOptions(parent=self))
        self.register_outputs({})


count = pulumi.Config().require_int("machines")
root = pulumi.ComponentResource("bench:floor:Site", "site")
for i in range(count):
    Machine(f"m{i:03d}", pulumi.ResourceOptions(parent=root))

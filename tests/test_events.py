"""The event stream's contract: delivery order, a failing observer, cheap when idle."""

from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from ownsocket.events import KINDS, EventBus, EventList, IEventObserver


class Broken:
    def observe(self, event):
        raise RuntimeError("boom")


class EventBusTests(unittest.TestCase):
    def test_idle_bus_is_inactive_and_publishes_nothing(self):
        bus = EventBus(Clock())
        self.assertFalse(bus.active)
        bus.publish("dhcp", "received", message="discover")  # no observer: no error

    def test_events_carry_clock_time_and_fields_in_order(self):
        clock = Clock()
        bus = EventBus(clock)
        seen = EventList()
        bus.subscribe(seen)
        self.assertTrue(bus.active)
        bus.publish("dhcp", "received", mac="52:54:00:00:00:01", message="discover", xid=1)
        clock.advance(2.5)
        bus.publish("tftp", "started", peer="10.0.0.5", file="a")
        self.assertEqual(seen.kinds(), [("dhcp", "received"), ("tftp", "started")])
        self.assertEqual(seen.events[1].time, 2.5)
        self.assertEqual(seen.events[0].fields["message"], "discover")
        self.assertEqual(seen.events[1].peer, "10.0.0.5")

    def test_failing_observer_does_not_stop_the_others(self):
        bus = EventBus(Clock())
        seen = EventList()
        bus.subscribe(Broken())
        bus.subscribe(seen)
        bus.publish("http", "started", file="x", size=1)
        self.assertEqual(len(seen.events), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unsubscribe(self):
        bus = EventBus(Clock())
        seen = EventList()
        bus.subscribe(seen)
        bus.unsubscribe(seen)
        bus.publish("http", "started", file="x", size=1)
        self.assertEqual(seen.events, [])

    def test_bus_and_list_are_observers(self):
        verifyObject(IEventObserver, EventBus())
        verifyObject(IEventObserver, EventList())

    def test_contract_names_every_service(self):
        self.assertEqual(set(KINDS), {"dhcp", "dhcp6", "proxy", "tftp", "http", "server"})

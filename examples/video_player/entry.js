// The <moq-watch> element, plus the libraries on window for pages (and tests) that go further:
// MoqWatch (the player's signals) and MoqJson (@moq/json, to read JSON data tracks of a broadcast).
import "@moq/watch/element";
import * as Json from "@moq/json";
import * as Watch from "@moq/watch";

window.MoqWatch = Watch;
window.MoqJson = Json;

// The <moq-watch> element, and the library on window.MoqWatch for pages and tests that read its signals.
import "@moq/watch/element";
import * as Watch from "@moq/watch";

window.MoqWatch = Watch;

// The live mode's audio thread: cuts what comes in into blocks of blockSize frames
// (interleaved, posted to the page with the frames still queued for playback), and plays
// the blocks the page posts back, in order, silence while none is there. Capture and playback
// run on one clock, so answers that pile up after a stall would stay queued, and late, for the
// rest of the session: beyond maxQueued frames the oldest are dropped (one skip instead).
"use strict";

class LiveSeparation extends AudioWorkletProcessor {
  constructor(options) {
    super();
    ({ blockSize: this.blockSize, channels: this.channels, maxQueued: this.maxQueued } = options.processorOptions);
    this.block = new Float32Array(this.blockSize * this.channels);
    this.filled = 0;  // frames in this.block
    this.queue = [];  // blocks to play, interleaved
    this.queuedFrames = 0;  // in this.queue and what is left of this.playing
    this.playing = null;
    this.position = 0;  // samples of this.playing played
    this.port.onmessage = (event) => this.enqueue(event.data);
  }

  enqueue(block) {
    this.queue.push(block);
    this.queuedFrames += block.length / this.channels;
    while (this.queuedFrames > this.maxQueued && this.queue.length > 1) {
      this.queuedFrames -= this.queue.shift().length / this.channels;
    }
  }

  process(inputs, outputs) {
    this.capture(inputs[0]);
    this.play(outputs[0]);
    return true;
  }

  capture(input) {
    if (input.length === 0) return;  // nothing connected: the input has stopped
    for (let frame = 0; frame < input[0].length; frame++) {
      for (let channel = 0; channel < this.channels; channel++) {
        this.block[this.filled * this.channels + channel] = input[channel][frame];
      }
      if (++this.filled === this.blockSize) {
        this.port.postMessage({ block: this.block, queued: this.queuedFrames }, [this.block.buffer]);
        this.block = new Float32Array(this.blockSize * this.channels);
        this.filled = 0;
      }
    }
  }

  play(output) {
    for (let frame = 0; frame < output[0].length; frame++) {
      if (this.playing === null || this.position === this.playing.length) {
        this.playing = this.queue.shift() || null;
        this.position = 0;
        if (this.playing === null) return;  // outputs start as silence
      }
      for (let channel = 0; channel < this.channels; channel++) {
        output[channel][frame] = this.playing[this.position++];
      }
      this.queuedFrames--;
    }
  }
}

registerProcessor("live-separation", LiveSeparation);

// Package pb holds the protobuf messages shoal's actors exchange, generated
// from messages.proto (`make proto`), and the hand-written Target methods
// that name each request's destination actor.
package pb
